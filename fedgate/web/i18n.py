"""The consoles' words: Simplified Chinese first, English on request.

Every string a page shows comes from ``CATALOGUE`` (key → (中文, English)); ``translate`` fills
``{name}`` placeholders. A missing key raises ``KeyError`` (the tests render every page in both
languages), except for protobuf field labels, which fall back to the field name.
"""

from __future__ import annotations

from typing import Final

from fedgate.words import VALUE_WORDS

__all__ = [
    "CATALOGUE",
    "DEFAULT_LANGUAGE",
    "LANGUAGES",
    "choose_language",
    "field_label",
    "translate",
]

LANGUAGES: Final = ("zh", "en")
DEFAULT_LANGUAGE: Final = "zh"

_UI: dict[str, tuple[str, str]] = {
    # shell
    "app.staff_title": ("驻点人员工作台", "Staff console"),
    "app.auditor_title": ("审计控制台", "Auditor console"),
    "app.skip": ("跳到正文", "Skip to content"),
    "app.signed_in_as": ("当前用户", "Signed in as"),
    "app.logout": ("退出登录", "Log out"),
    "app.switch_language": ("English", "中文"),
    "app.switch_language_title": ("Switch to English", "切换到简体中文"),
    "app.footer": (
        "fedgate · 所有操作均记入审计日志 · 个人信息仅用于反诈工作（《反电信网络诈骗法》第十六条）",
        "fedgate · every action is audited · personal data is for anti-fraud use only"
        " (Anti-Telecom and Online Fraud Law, Art. 16)",
    ),
    "role.staff": ("驻点人员", "stationed staff"),
    "role.auditor": ("审计员", "auditor"),
    # login
    "login.title": ("登录", "Log in"),
    "login.user": ("用户名", "User id"),
    "login.password": ("密码", "Password"),
    "login.submit": ("登录", "Log in"),
    "login.hint": (
        "仅限本单位已登记的账号。连续 5 次密码错误将锁定 15 分钟。",
        "Registered accounts of this member only. 5 wrong passwords lock the account for"
        " 15 minutes.",
    ),
    "login.failed": ("用户名或密码错误。", "Wrong user id or password."),
    "login.locked": (
        "该账号因多次登录失败已被锁定，请 15 分钟后再试或联系管理员。",
        "This account is locked after repeated failed logins. Try again in 15 minutes or ask"
        " an administrator.",
    ),
    "login.not_here": (
        "该账号不能登录本控制台（{member} · {role}）。",
        "This account cannot log in to this console ({member} · {role}).",
    ),
    # notices
    "notice.logged_out": ("您已退出登录。", "You are logged out."),
    "notice.expired": (
        "会话已过期或无效，请重新登录。",
        "Your session has expired or is not valid. Please log in again.",
    ),
    "notice.claimed": ("已认领，请核对后答复。", "Claimed. Check it and answer."),
    "notice.released": ("已退回队列。", "Given back to the queue."),
    "notice.answered": ("答复已签名并发送。", "The answer is signed and sent."),
    "notice.rejected": ("已拒绝，拒绝理由已签名并发送。", "Refused; the signed reason is sent."),
    "notice.conflict": (
        "操作未完成：该查询的状态已改变（可能已被他人认领、已答复或已超时）。",
        "Not done: the query has changed (claimed by someone else, answered or expired).",
    ),
    # errors
    "error.title": ("出错了", "Something went wrong"),
    "error.back": ("返回", "Go back"),
    "error.home": ("回到首页", "Back to the start page"),
    "error.400": ("请求有误", "Bad request"),
    "error.401": ("需要登录", "Login required"),
    "error.403": ("无权访问", "Not allowed"),
    "error.404": ("未找到", "Not found"),
    "error.405": ("不支持的操作", "Method not allowed"),
    "error.409": ("状态已改变", "Conflict"),
    "error.500": ("系统内部错误", "Internal error"),
    "error.503": ("服务暂不可用", "Service unavailable"),
    "error.csrf": (
        "表单已失效（安全校验未通过）。请返回页面刷新后重试。",
        "The form has expired (security check failed). Go back, reload the page and try again.",
    ),
    "error.origin": (
        "请求来源不符，已拒绝。",
        "The request came from another site and was refused.",
    ),
    "error.explain.400": (
        "请求内容有误，请检查后重试。",
        "The request is not valid; check it and retry.",
    ),
    "error.explain.401": ("请先登录。", "Please log in first."),
    "error.explain.403": ("您无权执行此操作。", "You may not do this."),
    "error.detail": ("详情", "Detail"),
    "error.not_found": ("没有这个页面或记录。", "There is no such page or record."),
    "error.internal": (
        "处理请求时出错，已记录。请稍后再试。",
        "The request failed and the error was logged. Please try again later.",
    ),
    "error.audit": (
        "审计记录暂时无法写入，为安全起见本操作未执行。",
        "The audit record cannot be written now, so nothing was done.",
    ),
    # staff queue
    "queue.title": ("待办队列", "Queue"),
    "queue.summary": ("共 {count} 条待办，其中 {mine} 条由您认领。", "{count} open, {mine} yours."),
    "queue.empty": ("队列为空。", "The queue is empty."),
    "queue.empty_hint": (
        "新的查询到达后会自动出现在这里，无需刷新。",
        "New queries appear here by themselves; no need to reload.",
    ),
    "queue.refresh": ("刷新", "Reload"),
    "queue.live": ("自动更新中", "Updating live"),
    "queue.new_items": ("队列已更新：{count} 条待办。", "Queue updated: {count} open."),
    "queue.col.urgency": ("紧急程度", "Urgency"),
    "queue.col.case": ("案件编号", "Case"),
    "queue.col.action": ("事项", "Action"),
    "queue.col.subject": ("查询对象", "Subject"),
    "queue.col.officer": ("承办民警", "Officer"),
    "queue.col.deadline": ("答复期限", "Deadline"),
    "queue.col.state": ("状态", "State"),
    "queue.col.do": ("操作", "Do"),
    "queue.claim": ("认领", "Claim"),
    "queue.release": ("退回", "Release"),
    "queue.open": ("处理", "Open"),
    "queue.view": ("查看", "View"),
    "queue.claimed_by": ("{user} 已认领", "claimed by {user}"),
    "queue.claimed_by_me": ("我已认领", "claimed by me"),
    "queue.remaining": ("剩余", "left"),
    "queue.overdue": ("已超时", "overdue"),
    "queue.noscript": (
        "未启用 JavaScript：倒计时和自动更新不可用，请手动刷新。",
        "JavaScript is off: countdowns and live updates are unavailable; reload by hand.",
    ),
    # history
    "history.title": ("我的答复", "My answers"),
    "history.empty": ("您还没有答复过查询。", "You have not answered any query yet."),
    "history.col.answered_at": ("答复时间", "Answered"),
    "history.col.status": ("结果", "Outcome"),
    "history.col.request": ("请求编号", "Request id"),
    # item page
    "item.title": ("查询详情", "Query"),
    "item.request": ("请求内容", "The request"),
    "item.case": ("案件", "Case"),
    "item.case_type": ("案件类别", "Case type"),
    "item.case_reason": ("案由", "Case reason"),
    "item.legal_document": ("法律文书", "Legal document"),
    "item.purpose": ("用途", "Purpose"),
    "item.requesting_agency": ("请求单位", "Requesting agency"),
    "item.officer": ("承办民警", "Officer"),
    "item.second_officer": ("协查民警", "Second officer"),
    "item.received_at": ("收到时间", "Received"),
    "item.deadline": ("答复期限", "Deadline"),
    "item.request_id": ("请求编号", "Request id"),
    "item.details": ("事项内容", "Details"),
    "item.masked_note": (
        "认领后方可查看完整的账号、证件号和电话号码。",
        "Claim the query to see full account, ID and phone numbers.",
    ),
    "item.backend": ("本行/本公司系统数据", "Data from our own system"),
    "item.backend_result": (
        "系统查得的结果如下，核对无误后点击“确认发送”。",
        "Our system found the following. Check it, then confirm.",
    ),
    "item.backend_context": (
        "执行前请核对对象信息。“确认执行”将由系统执行该指令并签名答复。",
        "Check the subject before executing. Confirm to have our system execute the order and"
        " sign the answer.",
    ),
    "item.backend_none": ("系统无法自动查得，请人工填写答复。", "Our system cannot look this up."),
    "item.backend_error": ("系统查询结果：{detail}", "Our system says: {detail}"),
    "item.confirm": ("确认发送", "Confirm and send"),
    "item.confirm_order": ("确认执行", "Confirm and execute"),
    "item.manual": ("人工填写答复", "Answer by hand"),
    "item.manual_hint": (
        "仅在系统数据不可用或有误时填写；提交后将以您的名义签名发送。",
        "Only when our system's data is missing or wrong; it is signed in your name.",
    ),
    "item.send_manual": ("按填写内容答复", "Send this answer"),
    "item.rows_hint": (
        "可修改系统数据的各行，或在空行中补录；空行不发送。每行须有时间、方向和金额（或号码），"
        "检查方式与系统答复相同。",
        "Correct our system's rows or add rows in the blank ones; blank rows are not sent. Each "
        "row needs a time, a direction and an amount (or a number), checked as system answers "
        "are.",
    ),
    "item.not_found": ("查无此对象", "Not found"),
    "item.not_found_hint": ("说明（必填）", "Explain (required)"),
    "item.send_not_found": ("答复“查无”", "Answer “not found”"),
    "item.reject": ("拒绝", "Refuse"),
    "item.reject_reason": (
        "拒绝理由（必填，将发送给民警）",
        "Reason (required, sent to the officer)",
    ),
    "item.send_reject": ("拒绝并发送理由", "Refuse and send the reason"),
    "item.claim_first": ("请先认领该查询。", "Claim this query first."),
    "item.answered": ("该查询已答复。", "This query is answered."),
    "item.invalid": ("答复未发送，请修正：{detail}", "Not sent; please fix: {detail}"),
    "item.yes": ("是", "yes"),
    "item.no": ("否", "no"),
    # urgency, state, status
    "urgency.0": ("未指定", "unspecified"),
    "urgency.1": ("普通", "routine"),
    "urgency.2": ("加急", "urgent"),
    "urgency.3": ("紧急", "emergency"),
    "state.0": ("未知", "unknown"),
    "state.1": ("待认领", "waiting"),
    "state.2": ("已认领", "claimed"),
    "state.3": ("已答复", "answered"),
    "state.4": ("已超时", "expired"),
    "case_type.unspecified": ("未指定", "unspecified"),
    "case_type.telecom_fraud": ("电信网络诈骗", "telecom and online fraud"),
    "case_type.aiding_cybercrime": ("帮助信息网络犯罪活动", "aiding cybercrime"),
    "case_type.concealing_proceeds": ("掩饰、隐瞒犯罪所得", "concealing proceeds of crime"),
    "case_type.other": ("其他", "other"),
    "legal_document.unspecified": ("未指定", "unspecified"),
    "legal_document.case_filing_decision": ("立案决定书", "case-filing decision"),
    "legal_document.query_notice": ("协助查询财产通知书", "notice to assist in a query"),
    "legal_document.stop_payment_notice": ("紧急止付通知书", "stop-payment notice"),
    "legal_document.freeze_notice": ("协助冻结财产通知书", "notice to assist in a freeze"),
    "legal_document.release_notice": ("解除冻结/止付通知书", "notice of release"),
    "legal_document.evidence_notice": ("调取证据通知书", "notice to obtain evidence"),
    "legal_document.countermeasure_order": ("技术反制通知", "countermeasure order"),
    "legal_document.agency_report": ("单位报告", "agency report"),
    "status.0": ("未知", "unknown"),
    "status.1": ("已答复", "answered"),
    "status.2": ("已拒绝", "refused"),
    "status.3": ("查无", "not found"),
    "status.4": ("待处理", "pending"),
    "status.5": ("已超时", "expired"),
    "status.6": ("请求无效", "invalid"),
}

_ACTIONS: dict[str, tuple[str, str]] = {
    "account_holder": ("主体查询", "Account holder"),
    "transactions": ("交易明细查询", "Transactions"),
    "accounts_by_id": ("全户查询", "All accounts by ID"),
    "login_records": ("登录记录查询", "Login records"),
    "aggregate_stats": ("汇总统计", "Aggregate statistics"),
    "stop_payment": ("紧急止付", "Stop payment"),
    "stop_payment_release": ("解除止付", "Release stop-payment"),
    "stop_payment_extend": ("延长止付", "Extend stop-payment"),
    "freeze": ("冻结", "Freeze"),
    "freeze_release": ("解除冻结", "Release freeze"),
    "freeze_renew": ("续冻", "Renew freeze"),
    "monitor_start": ("动态查询", "Start monitoring"),
    "monitor_stop": ("解除动态查询", "Stop monitoring"),
    "subscriber": ("机主查询", "Subscriber"),
    "number_status": ("号码状态查询", "Number status"),
    "sim_count": ("一证通查", "SIM count by ID"),
    "call_records": ("通话记录查询", "Call records"),
    "location": ("位置查询", "Location"),
    "number_suspend": ("停机", "Suspend number"),
    "number_block": ("封停号码", "Block number"),
    "number_restore": ("复机", "Restore number"),
    "sms_block": ("短信拦截", "Block SMS"),
    "case_report": ("案件举报", "Case report"),
    "abnormal_account_opening": ("异常开卡", "Abnormal account opening"),
    "case_linked_account": ("涉案账户", "Case-linked account"),
    "abnormal_event": ("异常事件", "Abnormal event"),
    "early_warning": ("预警", "Early warning"),
    "monitored_transaction": ("动态交易", "Monitored transaction"),
}

_FIELDS: dict[str, tuple[str, str]] = {
    "account_number": ("账号", "Account number"),
    "account_name": ("户名", "Account name"),
    "account_type": ("账户类型", "Account type"),
    "accounts": ("账户", "Accounts"),
    "active": ("生效中", "Active"),
    "agency": ("单位", "Agency"),
    "amount": ("金额", "Amount"),
    "amount_frozen": ("冻结金额", "Amount frozen"),
    "approval": ("审批", "Approval"),
    "at": ("时间", "At"),
    "available_balance": ("可用余额", "Available balance"),
    "balance": ("余额", "Balance"),
    "balance_after": ("交易后余额", "Balance after"),
    "branch": ("开户网点", "Branch"),
    "bulk_count": ("批量账户数", "Accounts in the order"),
    "cell_id": ("基站编号", "Cell id"),
    "channel": ("渠道", "Channel"),
    "count": ("数量", "Count"),
    "counterparty": ("对方号码", "Counterparty"),
    "counterparty_account": ("对方账号", "Counterparty account"),
    "counterparty_bank": ("对方银行", "Counterparty bank"),
    "counterparty_name": ("对方户名", "Counterparty name"),
    "currency": ("币种", "Currency"),
    "device_id": ("设备号", "Device id"),
    "direction": ("方向", "Direction"),
    "duration_s": ("时长（秒）", "Duration (s)"),
    "duty_phone": ("值班电话", "Duty phone"),
    "effective_at": ("生效时间", "Effective at"),
    "end": ("结束时间", "End"),
    "holder_name": ("户名", "Holder name"),
    "id_number": ("身份证号", "ID number"),
    "in_force": ("生效中", "In force"),
    "include_sms": ("含短信", "Include SMS"),
    "ip": ("IP 地址", "IP address"),
    "kind": ("类型", "Kind"),
    "latitude": ("纬度", "Latitude"),
    "live_sims": ("在用号码数", "Live SIMs"),
    "longitude": ("经度", "Longitude"),
    "memo": ("摘要", "Memo"),
    "method": ("冻结方式", "Method"),
    "metric": ("指标", "Metric"),
    "name": ("姓名", "Name"),
    "next_page_token": ("下一页标记", "Next page token"),
    "observed_at": ("观测时间", "Observed at"),
    "opened_at": ("开户时间", "Opened at"),
    "page": ("分页", "Page"),
    "payer_account": ("付款账号", "Payer account"),
    "payer_bank": ("付款银行", "Payer bank"),
    "payer_name": ("付款人", "Payer name"),
    "phone": ("手机号", "Phone"),
    "phone_number": ("手机号码", "Phone number"),
    "prior_freezes": ("在先冻结", "Earlier freezes"),
    "reason": ("原因", "Reason"),
    "records": ("记录", "Records"),
    "registered_at": ("入网时间", "Registered at"),
    "sender": ("发送方", "Sender"),
    "since": ("起始时间", "Since"),
    "start": ("开始时间", "Start"),
    "status": ("状态", "Status"),
    "stop_count": ("止付次数", "Stop-payments so far"),
    "subject": ("对象", "Subject"),
    "time": ("时间", "Time"),
    "total": ("合计", "Total"),
    "transaction_id": ("交易流水号", "Transaction id"),
    "transactions": ("交易", "Transactions"),
    "transfer_time": ("转账时间", "Transfer time"),
    "until": ("截止时间", "Until"),
    "victim_application": ("受害人申请编号", "Victim's application"),
    "window": ("时间范围", "Window"),
    "detail": ("说明", "Detail"),
    "minor_units": ("金额（分）", "Amount (minor units)"),
}

# -- the auditor console (gateway.console) ----------------------------------------------------

_AUDIT_UI: dict[str, tuple[str, str]] = {
    "audit.nav.search": ("检索", "Search"),
    "audit.nav.log": ("日志状态", "Log state"),
    "audit.nav.charts": ("统计图表", "Charts"),
    "audit.nav.flags": ("异常提示", "Flags"),
    "notice.revealed": (
        "已显示该字段，本次查看已记入审计日志。",
        "The field is shown; this reveal is recorded in the audit log.",
    ),
    # search
    "audit.search.title": ("检索审计日志", "Search the audit log"),
    "audit.search.summary": ("日志共 {size} 条记录。", "The log holds {size} entries."),
    "audit.search.case": ("案件编号", "Case number"),
    "audit.search.officer": ("民警姓名、警号或账号", "Officer name, badge number or user id"),
    "audit.search.subject": ("查询对象（账号、身份证号、手机号）", "Subject (account, ID, phone)"),
    "audit.search.subject_hint": ("须完整输入，精确匹配。", "Type it in full: exact match."),
    "audit.search.member": ("单位", "Member"),
    "audit.search.any": ("不限", "Any"),
    "audit.search.action": ("事项", "Action"),
    "audit.search.actions": ("查询与指令", "Queries and orders"),
    "audit.search.events": ("控制台事件", "Console events"),
    "audit.search.queries": ("查询", "Queries"),
    "audit.search.orders": ("指令", "Orders"),
    "audit.search.reports": ("单位报告", "Agency reports"),
    "audit.search.officer_matches": (
        "“{name}”对应多名民警，请选择：",
        "Several officers are called “{name}”; choose one:",
    ),
    "audit.search.officer_none": (
        "近期记录中没有名为“{name}”的民警；按警号查找也可以。",
        "No officer called “{name}” in the recent log; a badge number works too.",
    ),
    "event_detail.request_id": ("请求", "request"),
    "event_detail.action": ("事项", "action"),
    "event_detail.entry": ("记录", "entry"),
    "event_detail.field": ("字段", "field"),
    "event_detail.places": ("处数", "places"),
    "event_detail.reason": ("理由", "reason"),
    "event_detail.case": ("案件", "case"),
    "event_detail.status": ("结果", "status"),
    "event_detail.how": ("方式", "how"),
    "event_detail.user": ("用户", "user"),
    "event_detail.session": ("会话", "session"),
    "audit.search.outcome": ("结果", "Outcome"),
    "audit.search.kind": ("记录类型", "Kind of entry"),
    "audit.search.since": ("起始时间", "From"),
    "audit.search.until": ("截止时间（不含）", "Until (exclusive)"),
    "audit.search.submit": ("检索", "Search"),
    "audit.search.clear": ("清空条件", "Clear"),
    "audit.search.time_hint": ("时间均为北京时间。", "Times are China time (UTC+8)."),
    "audit.search.invalid": ("检索条件有误：{detail}", "The search is not valid: {detail}"),
    "audit.search.results": ("检索结果（最新在前）", "Results (newest first)"),
    "audit.search.none": ("没有符合条件的记录。", "No entry matches."),
    "audit.search.none_hint": (
        "请放宽条件；查询对象须完整、精确输入。",
        "Loosen the search; a subject must be typed in full.",
    ),
    "audit.search.empty_log": ("审计日志中还没有记录。", "The audit log has no entries yet."),
    "audit.search.empty_log_hint": (
        "经网关交换的每一次请求和答复都会记录在这里。",
        "Every request and answer exchanged through the gateway is recorded here.",
    ),
    "audit.col.time": ("时间", "Time"),
    "audit.col.kind": ("类型", "Kind"),
    "audit.col.members": ("请求单位 → 目标单位", "From → to"),
    "audit.col.officer": ("民警 / 账号", "Officer or user"),
    "audit.col.outcome": ("结果", "Outcome"),
    "audit.open_entry": ("查看第 {index} 条记录", "Open entry {index}"),
    "audit.pager": ("翻页", "Pages"),
    "audit.pager.newest": ("← 最新", "← Newest"),
    "audit.pager.showing": ("第 {first} 至 {last} 条", "Entries {first} to {last}"),
    "audit.pager.older": ("更早的 {count} 条 →", "Older {count} →"),
    "kind.request": ("请求", "request"),
    "kind.response": ("答复", "response"),
    "kind.event": ("事件", "event"),
    "outcome.allowed": ("准予", "allowed"),
    "outcome.refused": ("拒绝", "refused"),
    "outcome.ok": ("已答复", "answered"),
    "outcome.not_found": ("查无", "not found"),
    "outcome.pending": ("待人工答复", "pending"),
    "outcome.expired": ("已超时", "expired"),
    "outcome.invalid": ("请求无效", "invalid"),
    "outcome.node_fault": ("节点故障", "node fault"),
    "outcome.unavailable": ("不可达", "unavailable"),
    # one exchange
    "entry.title": ("第 {index} 条记录", "Entry {index}"),
    "entry.heading": ("第 {index} 条记录", "Entry {index}"),
    "entry.same_case": ("同案记录 {case}", "Same case {case}"),
    "entry.download": ("下载证据包（隐藏号码）", "Download evidence (masked)"),
    "entry.download_full": ("下载完整证据包", "Download the full evidence"),
    "entry.download_full_hint": (
        "完整证据包含账号、证件号和电话号码，可离线验证全部签名；须说明理由，下载记入审计日志。",
        "The full bundle holds account, ID and phone numbers and proves every signature "
        "offline; state why you need it — the download is recorded in the audit log.",
    ),
    "entry.reason": ("理由", "Reason"),
    "entry.reason_placeholder": (
        "为何需要查看（必填，记入审计日志）",
        "why you need it (required, audited)",
    ),
    "entry.reason_required": (
        "请说明理由（至少 {low} 个字），理由将记入审计日志",
        "state a reason (at least {low} characters); it is recorded in the audit log",
    ),
    "entry.masked_note": (
        "账号、证件号和电话号码默认隐藏；说明理由后点击“显示”查看，同一号码在本页各处一并显示，"
        "每次查看连同理由记入审计日志。",
        "Account, ID and phone numbers are masked; give a reason and reveal one — it then shows"
        " wherever this page has it, and the reveal is recorded with your reason in the audit"
        " log.",
    ),
    "entry.damaged": (
        "该记录无法解码，日志可能已损坏。请运行 fedgate audit verify 检查。",
        "This entry does not decode: the log may be damaged. Run fedgate audit verify.",
    ),
    "entry.checks": ("校验结果", "Checks"),
    "entry.witnesses": ("该检查点已由见证方 {names} 联署。", "Checkpoint cosigned by {names}."),
    "entry.no_witnesses": (
        "该检查点尚无见证方联署。",
        "No witness has cosigned this checkpoint yet.",
    ),
    "entry.leg.request": ("请求", "Request"),
    "entry.leg.response": ("答复", "Response"),
    "entry.leg.event": ("事件", "Event"),
    "entry.received_at": ("网关收到时间", "Received by the gateway"),
    "entry.peer": ("连接方（证书）", "Peer (certificate)"),
    "entry.peer_cert": ("证书指纹", "Certificate fingerprint"),
    "entry.decision": ("网关决定", "Decision"),
    "entry.rule": ("命中规则 / 拒绝原因", "Matched rule or reason"),
    "entry.issued_at": ("签发时间", "Issued at"),
    "entry.target_agency": ("目标单位", "Target agency"),
    "entry.original_request": ("原请求编号", "Original request"),
    "entry.responder": ("答复单位", "Responder"),
    "entry.status": ("状态", "Status"),
    "entry.response_hash": ("答复哈希", "Response hash"),
    "entry.answered_by": ("答复人", "Answered by"),
    "entry.automatic": ("系统自动答复", "automatic"),
    "entry.answered_at": ("答复时间", "Answered at"),
    "entry.result": ("答复内容", "The answer"),
    "entry.event_kind": ("事件类型", "Event"),
    "entry.actor": ("操作人", "Actor"),
    "entry.member": ("单位", "Member"),
    "entry.at": ("时间", "At"),
    "entry.details": ("详情", "Details"),
    "entry.reveal": ("显示", "Reveal"),
    "entry.reveal_label": ("显示{field}（将记入审计日志）", "Reveal {field} (audited)"),
    "entry.revealed": ("已显示 · 已审计", "revealed · audited"),
    "entry.revealed_title": (
        "本次查看已记入审计日志，10 分钟后重新隐藏。",
        "This reveal is in the audit log; it is masked again after 10 minutes.",
    ),
    "entry.receipt": ("收据：包含证明（C2SP tlog-proof）", "Receipt: inclusion proof (tlog-proof)"),
    "entry.receipt_hint": (
        "该证明针对当前最新检查点，可用任何透明日志工具离线核验。",
        "Proved against the latest checkpoint; any transparency-log tool can check it offline.",
    ),
    "check.ok": ("已验证", "verified"),
    "check.failed": ("验证失败", "failed"),
    "check.neutral": ("未验证", "not checked"),
    "check.undecodable": (
        "请求信封无法解码（网关在解码阶段拒绝）。",
        "The request envelope does not decode (refused at decoding).",
    ),
    "check.request_signed": (
        "已验证：请求签名有效，由 {signer} 的密钥 {key}… 签署（签发时该密钥有效）。",
        "Verified: the request is signed by {signer} with key {key}… (valid when it signed).",
    ),
    "check.request_unsigned": (
        "请求已被拒绝，签名未通过验证：{detail}",
        "The request was refused; its signature does not verify: {detail}",
    ),
    "check.request_bad": ("请求签名验证失败：{detail}", "The request signature fails: {detail}"),
    "check.no_response": (
        "该答复记录未保留机构签名的答复原文。",
        "This response leg keeps no signed response.",
    ),
    "check.response_signed": (
        "已验证：答复由 {signer} 签名，并绑定到本请求（请求哈希一致）。",
        "Verified: the answer is signed by {signer} and bound to this request (hash matches).",
    ),
    "check.node_fault": (
        "机构节点故障，网关已拒收其答复：{detail}",
        "Node fault: the gateway rejected the agency's answer: {detail}",
    ),
    "check.response_bad": ("答复签名验证失败：{detail}", "The response signature fails: {detail}"),
    "check.checkpoint_signed": (
        "已验证：最新检查点（共 {size} 条）由日志 {origin} 的网关密钥签署。",
        "Verified: the latest checkpoint (size {size}) is signed by the gateway key of {origin}.",
    ),
    "check.checkpoint_bad": ("最新检查点签名验证失败：{detail}", "The checkpoint fails: {detail}"),
    "check.included": (
        "已验证：第 {index} 条记录包含在共 {size} 条的日志树中（包含证明有效）。",
        "Verified: entry {index} is included in the tree of size {size} (inclusion proof).",
    ),
    "check.not_included": ("包含证明验证失败：{detail}", "The inclusion proof fails: {detail}"),
    "check.not_yet": (
        "该记录尚未被最新检查点（共 {size} 条）覆盖。",
        "Not yet covered by the latest checkpoint (size {size}).",
    ),
    # log state
    "audit.log.title": ("日志状态", "Log state"),
    "audit.log.checkpoint": ("最新检查点", "Latest checkpoint"),
    "audit.log.signed": (
        "已验证：检查点（共 {size} 条）由网关密钥签署（依据成员名录）。",
        "Verified: the checkpoint (size {size}) is signed by the gateway key in the registry.",
    ),
    "audit.log.unsigned": ("检查点签名验证失败：{detail}", "The checkpoint fails: {detail}"),
    "audit.log.size": ("记录数", "Size"),
    "audit.log.root": ("根哈希", "Root hash"),
    "audit.log.cosigned_size": ("最新联署检查点", "Latest cosigned size"),
    "audit.log.note": ("检查点原文（签名便笺）", "Checkpoint note"),
    "audit.log.consistency": ("一致性检查", "Consistency check"),
    "audit.log.consistency_unknown": (
        "检查点签名无效，无法进行一致性检查。",
        "The checkpoint does not verify, so consistency cannot be checked.",
    ),
    "audit.log.consistent": (
        "已验证：共 {new} 条的检查点是共 {old} 条检查点的延续（一致性证明有效）。",
        "Verified: the checkpoint of size {new} extends the one of size {old} (consistency proof).",
    ),
    "audit.log.inconsistent": (
        "一致性检查失败：共 {new} 条的检查点不是共 {old} 条检查点的延续：{detail}",
        "Consistency fails: size {new} does not extend size {old}: {detail}",
    ),
    "audit.log.inconsistent_hint": (
        "日志可能被回滚或篡改。请立即运行 fedgate audit verify 并上报。",
        "The log may have been rolled back or altered. Run fedgate audit verify and report it.",
    ),
    "audit.log.first_seen": (
        "首次看到共 {size} 条的检查点，暂无可比较的早期检查点。",
        "First checkpoint seen (size {size}); nothing earlier to compare with yet.",
    ),
    "audit.log.checked_at": ("检查时间：{at}", "Checked at {at}"),
    "audit.log.consistency_hint": (
        "本控制台记住上次核验的检查点，每次日志增长都用一致性证明核验新检查点是其延续。",
        "The console remembers the last checkpoint it checked and proves each new one extends it.",
    ),
    "audit.log.witnesses": ("见证方联署", "Witness cosignatures"),
    "audit.log.witness": ("见证方", "Witness"),
    "audit.log.witness_size": ("联署的检查点", "Cosigned size"),
    "audit.log.witness_at": ("联署时间", "Cosigned at"),
    "audit.log.witness_state": ("状态", "State"),
    "audit.log.witness_current": ("已联署最新检查点", "cosigned the latest"),
    "audit.log.witness_behind": ("落后 {count} 条", "{count} behind"),
    "audit.log.witness_none": ("尚未联署", "no cosignature yet"),
    "audit.log.no_witnesses": ("成员名录中没有见证方。", "The registry lists no witness."),
    "audit.log.witness_hint": (
        "见证方在核验一致性后联署检查点，网关运营方无法在不被发现的情况下分叉或改写日志。",
        "Witnesses cosign checkpoints after checking consistency, so the gateway's operator"
        " cannot fork or rewrite the log unnoticed.",
    ),
    # charts
    "audit.charts.title": ("统计图表", "Charts"),
    "audit.charts.hint": (
        "自 {first} 起（北京时间）；请求计入当日，包括被拒绝的请求。",
        "From {first} (China time); requests count on their day, refused ones included.",
    ),
    "audit.charts.by_member": ("每日请求数（按单位）", "Requests per day by member"),
    "audit.charts.group": ("分组", "Group by"),
    "audit.charts.by.requester": ("按请求单位", "by requesting member"),
    "audit.charts.by.target": ("按目标单位", "by target member"),
    "audit.charts.by_action": ("每日请求数（按事项）", "Requests per day by action"),
    "audit.charts.refusals": ("拒绝原因", "Refusals by reason"),
    "audit.charts.refusals_hint": (
        "网关拒绝（按原因代码）与机构拒绝（AGENCY_REFUSED）。",
        "Refused by the gateway (by reason code) or by the agency (AGENCY_REFUSED).",
    ),
    "audit.charts.empty": ("该时间范围内没有请求。", "No requests in this period."),
    "audit.charts.no_refusals": ("该时间范围内没有拒绝。", "No refusals in this period."),
    "chart.desc": ("共 {total} 条。", "{total} in all."),
    "chart.bar": ("{day} · {name}：{count}", "{day} · {name}: {count}"),
    "chart.legend": ("图例", "Legend"),
    "chart.as_table": ("以表格查看", "Show as a table"),
    "chart.day": ("日期", "Day"),
    "chart.total": ("合计", "Total"),
    "chart.reason": ("原因", "Reason"),
    "chart.code": ("代码", "Code"),
    "chart.count": ("次数", "Count"),
    "chart.window": ("时间范围", "Period"),
    "chart.days": ("近 {count} 天", "{count} days"),
    "chart.other": ("其他", "other"),
    # flags
    "audit.flags.title": ("异常提示", "Flags"),
    "audit.flags.summary": ("共 {count} 项提示。", "{count} flagged."),
    "audit.flags.hint": (
        "提示只是需要复核的线索，并非结论；点击“查看记录”逐条核实。",
        "A flag is a reason to look, not a finding: open the entries to check.",
    ),
    "flag.volume": ("查询量异常", "Unusual volume"),
    "flag.volume_rule": (
        "某民警单日个人信息查询量超过其平时日查询量中位数的 {factor} 倍，且不少于 {minimum} 次。",
        "An officer's personal-data queries on one day exceed {factor}× their median day and"
        " number at least {minimum}.",
    ),
    "flag.off_hours": ("非工作时间查询", "Queries outside working hours"),
    "flag.off_hours_rule": (
        "北京时间 {start} 之前或 {end} 之后的查询。",
        "Queries before {start} or after {end}, China time.",
    ),
    "flag.no_order": ("查询后无后续措施", "Queries with no later order"),
    "flag.no_order_rule": (
        "查询个人信息后 {days} 天内同一案件没有任何止付、冻结、停机等指令（仅判断 {until}"
        " 之前的查询）。",
        "Personal-data queries that no order in the same case followed within {days} days"
        " (judged for queries before {until}).",
    ),
    "flag.refusals": ("多次被拒", "Repeated refusals"),
    "flag.refusals_rule": (
        "同一民警单日被拒绝不少于 {minimum} 次。",
        "At least {minimum} refusals for one officer in one day.",
    ),
    "flag.queries": ("查询次数", "Queries"),
    "flag.refused": ("被拒次数", "Refusals"),
    "flag.baseline": ("平时", "Usual"),
    "flag.median": ("中位数 {median}（{days} 天）", "median {median} ({days} days)"),
    "flag.period": ("查询时间", "Queried"),
    "flag.see": ("查看记录", "See entries"),
    "flag.see_case": ("查看同案记录", "See the case"),
    "flag.first": ("第一条", "First"),
    "flag.none": ("无。", "None."),
    # refusal reasons (fedgate.errors stable reasons)
    "reason.INVALID_ARGUMENT": ("请求内容无效", "Invalid request"),
    "reason.MALFORMED": ("格式错误", "Malformed"),
    "reason.UNAUTHENTICATED": ("未通过认证", "Not authenticated"),
    "reason.SIGNATURE_INVALID": ("签名无效", "Bad signature"),
    "reason.UNKNOWN_KEY": ("未知密钥", "Unknown key"),
    "reason.KEY_NOT_VALID": ("密钥无效", "Key not valid"),
    "reason.PEER_MISMATCH": ("身份不符", "Peer mismatch"),
    "reason.MEMBER_REFUSED": ("成员已吊销或未知", "Member refused"),
    "reason.PERMISSION_DENIED": ("无权限", "Permission denied"),
    "reason.POLICY_DENIED": ("访问策略不允许", "Denied by policy"),
    "reason.RULE_VIOLATED": ("违反业务规则", "Business rule violated"),
    "reason.REPLAYED": ("重放请求", "Replayed"),
    "reason.STALE": ("请求时间超出允许范围", "Stale"),
    "reason.QUOTA_EXCEEDED": ("超出查询配额", "Quota exceeded"),
    "reason.AGENCY_REFUSED": ("机构拒绝", "Refused by the agency"),
    "reason.AGENCY_UNAVAILABLE": ("机构不可达", "Agency unavailable"),
    "reason.AUDIT_UNAVAILABLE": ("审计日志不可写", "Audit log unavailable"),
    "reason.UNKNOWN": ("未知原因", "Unknown"),
    # console events
    "event.console_login": ("控制台登录", "Console login"),
    "event.console_login_failed": ("登录失败", "Failed login"),
    "event.console_locked_out": ("账号锁定", "Account locked"),
    "event.console_login_refused": ("登录被拒", "Login refused"),
    "event.console_logout": ("退出登录", "Logout"),
    "event.console_reveal": ("显示个人信息", "Identifier revealed"),
    "event.console_export": ("导出证据包", "Evidence exported"),
    "event.console_claim": ("认领查询", "Query claimed"),
    "event.console_claim_refused": ("认领被拒", "Claim refused"),
    "event.console_release": ("退回查询", "Query released"),
    "event.console_answer": ("答复查询", "Query answered"),
}

_AUDIT_FIELDS: dict[str, tuple[str, str]] = {
    "id": ("编号", "Id"),
    "role": ("身份", "Role"),
    "approver": ("审批人", "Approver"),
    "document_number": ("文书号", "Document number"),
    "approved_at": ("审批时间", "Approved at"),
    "issued_at": ("签发时间", "Issued at"),
}

CATALOGUE: Final[dict[str, tuple[str, str]]] = {
    **_UI,
    **_AUDIT_UI,
    **{f"action.{k}": v for k, v in _ACTIONS.items()},
    **{f"field.{k}": v for k, v in _FIELDS.items()},
    **{f"field.{k}": v for k, v in _AUDIT_FIELDS.items()},
    **{f"value.{k}": v for k, v in VALUE_WORDS.items()},
}


def choose_language(query: str | None, cookie: str | None) -> str:
    """The page language: ``?lang=`` first, then the cookie, then Chinese."""
    for candidate in (query, cookie):
        if candidate in LANGUAGES:
            assert candidate is not None
            return candidate
    return DEFAULT_LANGUAGE


def translate(lang: str, key: str, /, **params: object) -> str:
    """The string for ``key`` in ``lang`` with ``{name}`` placeholders filled.
    Raises ``KeyError`` for an unknown key."""
    zh, en = CATALOGUE[key]
    text = en if lang == "en" else zh
    return text.format(**params) if params else text


def field_label(lang: str, field: str) -> str:
    """A protobuf field's label; the field name itself when the catalogue has none."""
    pair = CATALOGUE.get(f"field.{field}")
    if pair is None:
        return field.replace("_", " ")
    return pair[1] if lang == "en" else pair[0]
