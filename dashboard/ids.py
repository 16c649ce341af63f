"""Every component id of the app, in one place (pages and tests import them from here)."""

from __future__ import annotations

# shell
URL = "url"
PAGE = "page-content"
NAV = "nav"
HEADER_RUN = "header-run"
CLOCK = "clock"
TICK = "tick"
REPLAY_TOGGLE = "replay-toggle"
REPLAY_BAR = "replay-bar"
PLAY = "replay-play"
SPEED = "replay-speed"
SEEK = "replay-seek"
CLOCK_LABEL = "clock-label"
MODE_BADGE = "mode-badge"
FRESHNESS = "freshness"
FRESH_CHIP = "fresh-chip"
FRESH_VIEW = "fresh-view"
#: the URL (path + search) the page shows now (dashboard.deeplink)
VIEW_SHOWN = "view-shown"
#: what a page with URL parameters drew from the URL (dashboard.deeplink.born)
VIEW_BORN = "view-born"
ERROR_CARD = "error-card"

# runs
RUNS_TABLE = "runs-table"
RUNS_PICK = "runs-pick"
RUNS_COMPARE = "runs-compare"
RUNS_REFRESH = "runs-refresh"
RUNS_INIT = "runs-init"
COMPARE_NOTE = "compare-note"

# overview
OV_KPIS = "ov-kpis"
OV_ALERTS = "ov-alerts"
OV_STEPS = "ov-steps"
OV_BUBBLES = "ov-bubbles"
OV_COMM = "ov-comm"
OV_STRAGGLERS = "ov-stragglers"
OV_PROBES = "ov-probes"
OV_TH_BUBBLE = "ov-th-bubble"
OV_TH_BW = "ov-th-bw"
OV_TH_Z = "ov-th-z"
OV_COMPARE = "ov-compare"
OV_PHASES = "ov-phases"
OV_PHASES_KEY = "ov-phases-key"

# timeline
TL_GRAPH = "tl-graph"
TL_RANKS = "tl-ranks"
TL_OPTIONS = "tl-options"
TL_STATUS = "tl-status"
TL_VIEW = "tl-view"
TL_STEP = "tl-step"

# links
LK_NVL_HEAT = "lk-nvl-heat"
LK_IB_HEAT = "lk-ib-heat"
LK_NVL_LINES = "lk-nvl-lines"
LK_IB_LINES = "lk-ib-lines"
LK_PHASE = "lk-phase"
LK_NODE = "lk-node"
LK_METRIC = "lk-metric"
LK_CURSOR = "lk-cursor"
LK_KPIS = "lk-kpis"

# SMs
SM_AREA = "sm-area"
SM_GPU = "sm-gpu"
SM_SECONDS = "sm-seconds"
SM_KPIS = "sm-kpis"

# model explorer
MD_SCHEDULE = "md-schedule"
MD_PP = "md-pp"
MD_MB = "md-mb"
MD_F = "md-f"
MD_B = "md-b"
MD_W = "md-w"
MD_FB = "md-fb"
MD_P2P = "md-p2p"
MD_COMM_SMS = "md-comm-sms"
MD_FIG = "md-fig"
MD_TABLE = "md-table"
MD_SUMMARY = "md-summary"
MD_PREFILL = "md-prefill"
MD_SOURCE = "md-source"
MD_ERRORS = "md-errors"
#: the model page's dashboard.deeplink.born (its prefill sets it, so not VIEW_BORN)
MD_BORN = "md-born"

# experts
EX_HEAT = "ex-heat"
EX_BIAS = "ex-bias"
EX_NODES = "ex-nodes"
EX_LOSS = "ex-loss"
EX_KPIS = "ex-kpis"
EX_LAYER = "ex-layer"
EX_NOTE = "ex-note"

# GPUs (every rank at a glance)
GP_HEAT = "gp-heat"
GP_WORST = "gp-worst"
GP_GROUP = "gp-group"
GP_METRIC = "gp-metric"
GP_STATUS = "gp-status"
GP_KEY = "gp-key"

# render keys (see dashboard.pages.render_key): what each page last drew
OV_KEY = "ov-key"
TL_KEY = "tl-key"
SM_KEY = "sm-key"
EX_KEY = "ex-key"
