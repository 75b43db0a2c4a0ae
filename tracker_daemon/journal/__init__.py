"""Journal: the write-ahead journal (segments, its files, group fsync and the mark), disk
space, the state-dir lock, and the glue from journal to commit (feeder: read-back and replay;
settlement: commit progress applied to the journal). May use: commit, store, ops, errors."""
