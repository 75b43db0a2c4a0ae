"""Artifacts: the artifact lane (lane), the staging rules, where artifacts may be written
(artifact_roots) and the upload (artifact_writer). May use: commit, store, ops, errors."""
