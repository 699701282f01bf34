"""The pipeline core without Celery: discovery (pods -> targets) and the capture decision tree, handed their ports."""
