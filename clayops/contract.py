"""What clayops and a Clay table agree on (docs/ARCHITECTURE.md, "Clay facts the code relies on").

clayops puts its own lead id in every row it sends; Clay's HTTP API column posts the enriched row
back with that id and the shared secret in a header the operator typed into the column.
"""

LEAD_ID_FIELD = "clayops_lead_id"
# Header Clay's HTTP API column sends back with each callback (the operator types it into the column).
CALLBACK_HEADER = "X-Clayops-Secret"
