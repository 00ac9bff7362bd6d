"""The real-time service: REST sessions, WebRTC signalling, per-session workers, web client."""
