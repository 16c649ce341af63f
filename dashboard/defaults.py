"""Defaults shared by the dashboard's data layer and its command line; no imports, so that
``dualscope dashboard --help`` stays fast."""

#: steps of a live run's spans the dashboard holds (``dashboard.data.RunData``); what covers
#: the whole run comes from its step results then
LIVE_SPAN_STEPS = 20
