"""Issue 19, the picture of the journey on the result page: in Debian's Chromium the submission page
of a graded run shows the SVG with this run's addresses, for the student and the instructor, and the
page's CSP reports no violation; a result with hostile text shows it as text."""
from __future__ import annotations

import json

from grader.service.models import Result, db
from support.service import PASSWORDS
from tests.service.test_headers_exports import graded, served  # noqa: F401  (shared fixtures)
from support.engine_runs import KADDR, RBUF, SBUF


def open_submission(chromium_browser, served, user, submission_id):  # noqa: F811
    """A logged-in page on the submission, with the CSP reports of its console collected."""
    ctx = chromium_browser.new_context()
    page = ctx.new_page()
    page.violations = []
    page.on("console", lambda m: page.violations.append(m.text)
            if "Content Security Policy" in m.text else None)
    page.goto(f"{served}/login", timeout=15_000)
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", PASSWORDS[user])
    page.click("button[type=submit]")
    page.wait_for_load_state("load", timeout=15_000)
    page.goto(f"{served}/submissions/{submission_id}", timeout=15_000)
    return ctx, page


def test_result_page_draws_the_journey_with_this_runs_addresses(chromium_browser, app, served,  # noqa: F811
                                                                graded):  # noqa: F811
    for user in ("alice", "teacher"):
        ctx, page = open_submission(chromium_browser, served, user, graded)
        try:
            svg = page.locator("figure.journey svg#journey")
            assert svg.count() == 1, page.content()[:2000]
            box = svg.bounding_box()
            assert box and box["width"] > 300 and box["height"] > 200   # laid out, not hidden
            assert "48 bytes in 3 places" in page.text_content("#journey-title")
            assert page.locator("#journey .journey-address").all_text_contents() == [
                f"0x{SBUF:016x}", f"0x{KADDR:016x}", f"0x{RBUF:016x}"]
            assert page.locator("#journey .journey-copy line").count() == 2
            assert page.get_attribute("#journey", "role") == "img"
            # the stylesheet applies to the figure (style-src 'self')
            assert page.eval_on_selector("figure.journey svg", "e => getComputedStyle(e).maxWidth") == "100%"
            assert page.violations == []
        finally:
            ctx.close()


def test_hostile_text_in_a_result_is_drawn_as_text(chromium_browser, app, served, graded):  # noqa: F811
    with app.app_context():
        result = Result.query.filter_by(submission_id=graded).one()
        data = dict(result.data)
        data["message"] = '<script>document.title="owned"</script><img src=x>'
        rows = [dict(r) for r in data["trace_table"]]
        rows[0]["location"] = '</text><script>document.title="owned"</script> 0x4141'
        data["trace_table"] = rows
        result.result_json = json.dumps(data)
        db.session.commit()
    ctx, page = open_submission(chromium_browser, served, "alice", graded)
    try:
        assert page.title() != "owned"
        assert page.locator("#journey script, #journey img, figure.journey script").count() == 0
        assert page.locator("#journey .journey-address").first.text_content() == f"0x{0x4141:016x}"
        assert "<script>" in page.locator("#journey text").all_text_contents()[1]
        assert page.violations == []
    finally:
        ctx.close()
