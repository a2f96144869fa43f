"""The HTTP service for exported generators (`ganpipe serve`)."""
