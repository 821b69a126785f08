"""Publishing a run: the model card (card.py), background Hub uploads (hub.py, uploads.py),
webhooks (webhooks.py), and the few calls the trainer makes (session.py).
The retry command lives in simpletuner/cli/publish.py.  See documentation/PUBLISHING.md."""
