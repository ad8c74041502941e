"""Thin absl binaries over the library."""
