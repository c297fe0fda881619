"""Lab tools around the decision service: nothing here runs inside ``abr serve``.

`launcher` starts and stops a local server process; `loadgen` drives it with synthetic players
(`abr bench serve`); `fleet_client` lets a simulated fleet decide through it; `emulate` plays DASH assets
from `asset` (``abr media make``) in headless Chromium, optionally over a link shaped by `netns`;
`scenarios` holds the network shifts of the retraining experiments; `adapt` runs a deployment timeline of
networks through a live server with a retraining round after every epoch (`abr adapt`; its phases and
arms are parsed by `timeline`).
"""
