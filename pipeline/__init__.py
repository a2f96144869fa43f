"""ganpipe library: plain Python + torch, no workflow-engine imports."""

__version__ = "0.1.0"
