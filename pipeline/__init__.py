"""ganpipe library: plain Python + torch, no workflow-engine imports (see docs/architecture.md)."""
