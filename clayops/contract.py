"""What clayops and a Clay table agree on (docs/ARCHITECTURE.md, "Clay facts the code relies on").

clayops puts its own lead id in every row it sends; Clay's HTTP API column posts the enriched row
back with that id and the shared secret in a header the operator typed into the column.
"""

LEAD_ID_FIELD = "clayops_lead_id"
# Which send of the lead a row is (its credit reservation): a callback naming it books Clay's charge
# on that send, so a lead sent twice (an uncertain send, then a resend) shows both charges.
SEND_ID_FIELD = "clayops_send_id"
# Header Clay's HTTP API column sends back with each callback (the operator types it into the column).
CALLBACK_HEADER = "X-Clayops-Secret"
