"""The words people read for the codes answers carry: ``in`` → 转入 / in, ``class_ii`` →
二类账户 / class II account, ``police_investigator`` → 调查民警 / investigator.

One table for the CLI (which prints both languages) and the consoles (which print the chosen
one, through ``fedgate.web.i18n``). A code not in the table is shown as it is.
"""

from __future__ import annotations

from typing import Final

__all__ = ["CODE_FIELDS", "VALUE_WORDS", "bilingual"]

VALUE_WORDS: Final[dict[str, tuple[str, str]]] = {
    # transaction direction
    "in": ("转入", "in"),
    "out": ("转出", "out"),
    # account status (bank) and number state (carrier)
    "normal": ("正常", "normal"),
    "active": ("正常", "active"),
    "stopped": ("已止付", "stopped"),
    "frozen": ("已冻结", "frozen"),
    "closed": ("已销户", "closed"),
    "suspended": ("已停机", "suspended"),
    "blocked": ("已封停", "blocked"),
    "cancelled": ("已注销", "cancelled"),
    "sms_blocked": ("短信已拦截", "SMS blocked"),
    # account types
    "debit": ("借记卡", "debit card"),
    "credit": ("信用卡", "credit card"),
    "savings": ("储蓄账户", "savings account"),
    "class_i": ("一类账户", "class I account"),
    "class_ii": ("二类账户", "class II account"),
    "class_iii": ("三类账户", "class III account"),
    # channels
    "mobile": ("手机银行", "mobile banking"),
    "online": ("网上银行", "online banking"),
    "atm": ("ATM", "ATM"),
    "counter": ("柜面", "counter"),
    "pos": ("POS", "POS"),
    "third_party": ("第三方支付", "third-party payment"),
    # call records
    "call": ("通话", "call"),
    "sms": ("短信", "SMS"),
    # roles
    "police_investigator": ("调查民警", "investigator"),
    "police_duty_officer": ("值班民警", "duty officer"),
    "centre_supervisor": ("中心负责人", "centre supervisor"),
    "bank_staff": ("银行驻点人员", "bank staff"),
    "carrier_staff": ("运营商驻点人员", "carrier staff"),
    "central_bank_analyst": ("人民银行分析员", "central bank analyst"),
    "auditor": ("审计员", "auditor"),
    # enum values the answers carry
    "fixed_amount": ("限额冻结", "fixed amount"),
    "receive_only": ("只收不付", "receive only"),
    "suspend": ("停机", "suspend"),
    "block": ("封停", "block"),
    "restore": ("复机", "restore"),
    "routine": ("一般", "routine"),
    "urgent": ("紧急", "urgent"),
    "emergency": ("特急", "emergency"),
}
"""Each code's Chinese and English words."""

CODE_FIELDS: Final = frozenset(
    {"direction", "status", "account_type", "channel", "kind", "state", "role", "record_type"}
)
"""Result fields whose string values are codes from ``VALUE_WORDS``."""


def bilingual(code: str) -> str:
    """``转入 in`` for a known code (Chinese, then English); the code itself otherwise."""
    words = VALUE_WORDS.get(code)
    if words is None:
        return code
    zh, en = words
    return zh if zh == en else f"{zh} {en}"
