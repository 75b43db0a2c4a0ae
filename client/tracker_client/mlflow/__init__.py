"""The ``tracker://`` MLflow plugin: MLflow's tracking and registry store over the daemon.

Owns the entry points' body (:mod:`.plugin`, importing nothing from mlflow: MLflow loads it while
``import mlflow`` runs), the store classes (:mod:`.store`) and the allow-listed entity codec. May
use everything below it: the public surface (Tracker, Run), delivery/ and wire/.
"""
