"""Lab tools around the decision service: nothing here runs inside ``abr serve``.

`launcher` starts and stops a local server process; `loadgen` drives it with synthetic players
(`abr bench serve`); `fleet_client` lets a simulated fleet decide through it; `emulate` plays DASH assets
from `asset` (``abr media make``) in headless Chromium, optionally over a link shaped by `netns`;
`scenarios` holds the network shifts of the retraining experiments.
"""
