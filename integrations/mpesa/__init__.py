"""M-Pesa through Safaricom's Daraja API (imports tenancy, accounts and operations; nothing imports it
but the site and admin actions).

- `payloads`: typed, strict parsing of every Daraja body (callbacks and API answers).
- `client`: the HTTP client (OAuth token shared through Redis, retries, timeouts); no ORM.
- `exceptions`: the `DarajaError` hierarchy and the services' refusals (`MpesaError`).
- services, one concern each: `inbox` (store and process callbacks), `publisher` (the one module
  that enqueues the tasks), `payments` (record, place, allocate), `matching` (who paid for what),
  `stk`, `reversals`, `status_queries`, `tills` (URLs, credentials); `reconciliation`, `spool`.
- `tasks`, `views`, `admin` on top of them. Phone numbers are operations' (operations/phones.py).

Daraja documentation: https://developer.safaricom.co.ke/APIs
"""
