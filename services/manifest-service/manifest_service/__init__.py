"""The manifest service: manifests, indexes, tags, catalog and referrers."""
