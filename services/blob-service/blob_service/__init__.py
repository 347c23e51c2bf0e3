"""The blob service: blob uploads and downloads against object storage."""
