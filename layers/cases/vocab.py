"""The vocabulary shared by the case workflow and the analytics that read its events.

States of a case file (``case_file.state``) and kinds of events (``case_event.kind``). The loop of
GB/T 30428.8: 信息收集 → 立案 → 派遣 → 处置 → 反馈 → 核查 → 结案 → 评价, plus the side states seen
in practice. Labels are zh-CN first with English beside; a city may relabel (configuration).
"""

STATES = {
    "collected": "信息收集 Collected",       # received, not yet accepted (awaiting verification/立案)
    "accepted": "立案 Accepted",             # a case is opened, to be dispatched
    "rejected": "不予立案 Not accepted",      # final, with a reason
    "dispatched": "派遣 Dispatched",         # sent to a department, waiting for it to act
    "processing": "处置 Processing",         # the department is handling it
    "feedback": "反馈 Handled",              # the department reports it done
    "verifying": "核查 Verifying",           # an inspector checks on site
    "closed": "结案 Closed",                 # final unless reopened; rating may follow
    "deferred": "缓办 Deferred",             # approved postponement
    "suspended": "挂账 Parked",              # parked long-term (approved)
    "merged": "并单 Merged",                 # a duplicate, merged into another case (merged_into)
    "void": "作废 Void",
}

OPEN_STATES = frozenset({"collected", "accepted", "dispatched", "processing", "feedback", "verifying",
                         "deferred", "suspended"})
FINAL_STATES = frozenset({"rejected", "closed", "merged", "void"})

EVENTS = {
    "received": "受理 Received",
    "located": "定位 Located",
    "accepted": "立案 Accepted",
    "rejected": "不予立案 Rejected",
    "dispatched": "派遣 Dispatched",
    "returned": "回退 Returned by department",
    "started": "签收/处置 Started",
    "feedback": "反馈 Feedback",
    "verify_ok": "核查通过 Verified",
    "verify_fail": "核查不通过 返工 Rework",
    "closed": "结案 Closed",
    "rated": "评价 Rated",
    "extended": "延期 Extended",
    "deferred": "缓办 Deferred",
    "suspended": "挂账 Parked",
    "resumed": "恢复 Resumed",
    "supervised": "督办 Supervision notice",
    "merged": "并单 Merged",
    "reopened": "重办 Reopened",
    "voided": "作废 Voided",
    "note": "备注 Note",
}

CHANNELS = ("电话", "微信", "网站", "APP", "信件", "领导信箱", "督查员", "其他")
REQUEST_TYPES = ("咨询", "求助", "投诉", "举报", "建议")
RATINGS = {"satisfied": "满意", "basic": "基本满意", "unsatisfied": "不满意"}
