"""M-Pesa through Safaricom's Daraja API.

- `phones`: Kenyan MSISDN normalisation and the hashed / masked forms Daraja sends in C2B.
- `payloads`: typed, strict parsing of every Daraja body (callbacks and API answers).
- `client`: the HTTP client (OAuth token shared through Redis, retries, timeouts); no ORM.
- `exceptions`: the `DarajaError` hierarchy.

The inbox models, services, tasks and callback views build on these modules.
Daraja documentation: https://developer.safaricom.co.ke/APIs
"""
