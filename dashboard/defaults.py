"""Defaults shared by the dashboard's data layer and its command line; no imports, so that
``dualscope dashboard --help`` stays fast."""

#: steps of a live run's spans the dashboard holds (``dashboard.data.RunData``); what covers
#: the whole run comes from its step results then
LIVE_SPAN_STEPS = 20

#: the share of its time the thread that recomputes a live run's stale views may compute
#: (``dashboard.refresh.refresh_later``): it rests as long again as it computed, so the pages'
#: callbacks keep the rest of the core
REFRESH_DUTY = 0.5

#: a live view that took at least this many seconds to compute is computed again in a forked
#: child at the lowest CPU priority (``dashboard.refresh.compute_apart``); a cheaper one on the
#: refresh thread itself (a fork of a large server costs a few tens of ms)
REFRESH_APART_MIN_S = 0.1

#: a live run's stale views are computed in a child process, not on the server's refresh
#: thread (``dashboard.refresh.compute_apart``; ``dualscope dashboard --refresh-in-process``)
REFRESH_APART = True
