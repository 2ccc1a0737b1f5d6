"""Development tools beside the package, never installed: the local stack and the demo."""
