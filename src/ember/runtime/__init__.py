"""Model files on disk: formats, the catalog, the blob store and pull sources; the scheduler."""
