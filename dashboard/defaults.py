"""Defaults shared by the dashboard's data layer and its command line; no imports, so that
``dualscope dashboard --help`` stays fast."""

#: steps of a live run's spans the dashboard holds (``dashboard.data.RunData``); what covers
#: the whole run comes from its step results then
LIVE_SPAN_STEPS = 20

#: the share of its time the thread that recomputes a live run's stale views may compute
#: (``dashboard.refresh.refresh_later``): it rests as long again as it computed, so the pages'
#: callbacks keep the rest of the core
REFRESH_DUTY = 0.5
