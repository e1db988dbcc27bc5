"""Train small scorers on frozen sentence embeddings: a Bradley-Terry reward head and a
request-harm head, saved as a folder that the ``trained`` scorer kind loads."""
