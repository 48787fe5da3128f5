"""The consoles' words: Simplified Chinese first, English on request.

Every string a page shows comes from ``CATALOGUE`` (key → (中文, English)); ``translate`` fills
``{name}`` placeholders. A missing key raises ``KeyError`` (the tests render every page in both
languages), except for protobuf field labels, which fall back to the field name.
"""

from __future__ import annotations

from typing import Final

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

CATALOGUE: Final[dict[str, tuple[str, str]]] = {
    **_UI,
    **{f"action.{k}": v for k, v in _ACTIONS.items()},
    **{f"field.{k}": v for k, v in _FIELDS.items()},
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
