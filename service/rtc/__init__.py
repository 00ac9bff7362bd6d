"""WebRTC plumbing: latest-frame tracks and peer connections (aiortc)."""
