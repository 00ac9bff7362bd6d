"""Pure computation for face reenactment: tracking, motion transfer, the warping generator.

Nothing here opens files, picks devices or knows about serving; see the README's architecture
section for how a frame travels: track -> transfer -> render -> paste.
"""
