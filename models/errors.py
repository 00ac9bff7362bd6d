"""One small error hierarchy shared by every layer; the service maps it to HTTP statuses."""


class ReenactError(Exception):
    """Base of every error reenact raises on purpose."""


class BadInputError(ReenactError):
    """The caller's input (image, video, SDP, packet) is unusable: corrupt, huge, wrong type."""


class NoFaceError(BadInputError):
    """No face was found where one is required (a source portrait, a keyframe)."""


class EngineError(ReenactError):
    """An inference engine could not be built, loaded or run."""
