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

# -- labels of the other codes a page may show (zh-CN first, English beside) -------------------------
# The message catalog of the pages (GET /api/v1/i18n, static/common/i18n.js) is made from these.

ACTION_LABELS = {
    "accept": "立案 Accept", "reject": "不予立案 Reject", "dispatch": "派遣 Dispatch", "return": "回退 Return",
    "start": "签收 Start", "feedback": "处置反馈 Report done", "verify_ok": "核查通过 Verified",
    "verify_fail": "核查不通过 Rework", "close": "结案 Close", "rate": "评价 Rate", "extend": "延期 Extend",
    "defer": "缓办 Defer", "suspend": "挂账 Park", "resume": "恢复 Resume", "supervise": "督办 Supervise",
    "reopen": "重办 Reopen", "void": "作废 Void",
}
SOURCE_LABELS = {
    "hotline": "12345热线 Hotline", "inspector": "监督员上报 Inspector", "citizen": "市民上报 Citizen",
    "open311": "Open311 接口 Open311", "other": "其他 Other", "operator": "话务员 Operator",
    "wechat": "微信公众号 WeChat", "import": "导入 Import",
}
URGENCY_LABELS = {"normal": "一般 Normal", "urgent": "紧急 Urgent", "emergency": "特急 Emergency"}
ROLE_LABELS = {
    "inspector": "监督员 Inspector", "operator": "受理员 Operator", "department": "处置部门 Department",
    "supervisor": "指挥长 Supervisor", "planner": "规划分析 Planner", "admin": "管理员 Administrator",
    "system": "系统 System", "citizen": "市民 Citizen",
}
#: Flags of an inspector's report and of its location (layers/field/reports.py).
FLAG_LABELS = {
    "no_position": "无定位 No position", "accuracy_unknown": "定位精度未知 Accuracy unknown",
    "accuracy_over_gate": "定位精度不足 Position too inaccurate", "far_from_case": "离案件位置过远 Far from the case",
    "case_not_located": "案件未定位 Case not located", "exif_far_from_case": "照片位置离案件过远 Photo far from the case",
    "no_photos": "无照片 No photos", "location_from_exif": "位置取自照片 Location from the photo",
    "exif_device_mismatch": "照片位置与设备定位不符 Photo and device positions differ",
    "device_time_skew": "设备时间偏差 Device clock off", "asset_far": "离部件过远 Far from the asset",
}
UNIT_LABELS = {"wh": "工作时 working hours", "eh": "紧急工作时 urgent hours", "wd": "工作日 working days"}
CLOCK_LABELS = {"green": "正常 On time", "yellow": "预警 Due soon", "red": "超时 Overdue"}
