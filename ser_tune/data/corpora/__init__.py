"""One module per corpus; each scans a folder into records (path, label, speaker, metadata) and skips."""
