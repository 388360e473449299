"""What a run leaves on disk: atomic files, the journal and its one reader, the folder lock."""
