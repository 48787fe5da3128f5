"""Protobuf views: identifiers masked in identifier fields and inside free text alike."""

from __future__ import annotations

from fedgate.v1 import request_pb2
from fedgate.web.protoview import FieldView, describe


def _texts(message: request_pb2.Response, *, reveal: bool) -> dict[str, str]:
    return {
        item.name: item.text
        for item in describe(message, "en", reveal=reveal)
        if isinstance(item, FieldView)
    }


class TestFreeText:
    def test_identifiers_in_free_text_are_masked_until_revealed(self) -> None:
        response = request_pb2.Response(
            request_id="r-1",
            detail="no account 6222 0212 3456 7891 234; call 138-1234-5678",
        )
        masked = _texts(response, reveal=False)
        assert masked["detail"] == "no account 622****1234; call 138****5678"
        clear = _texts(response, reveal=True)
        assert clear["detail"] == response.detail

    def test_text_without_identifiers_is_unchanged(self) -> None:
        response = request_pb2.Response(request_id="r-1", detail="不符合协查条件 (ticket 12)")
        assert _texts(response, reveal=False)["detail"] == "不符合协查条件 (ticket 12)"
