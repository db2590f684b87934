"""Background jobs as rows: the Job model, its admin, launching and retrying, the registry of job
kinds and the one task that runs them (`jobs.run`). Imports tenancy and celeryconf only; the apps
above register their job kinds here (operations/jobs.py, integrations/mpesa/reconciliation.py)."""
