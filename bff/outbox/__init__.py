"""The outbox: deferred, exactly-once writes of clinician-signed outcomes to an EHR (issue 6).

`retry` classifies a write's response and schedules the next try, `throttle` keeps each site within its rate
limit and stops sending to a failing site, `queue` holds the write intents and their state machine. No network
code lives here.
"""
