"""A student's and an instructor's path through the service, with a stand-in runner."""
from __future__ import annotations

import csv
import io

from support.app import make_worker, replay_runner
from support.service import lab_files
from tests.service.helpers import upload_data


def test_student_submits_and_sees_result(app, browser):
    alice = browser("alice")
    aid = app.ids["assignment"]
    page = alice.get(f"/assignments/{aid}")
    assert page.status_code == 200 and b"sender.c" in page.data
    r = alice.post(f"/assignments/{aid}/submit", data=upload_data(lab_files()),
                   content_type="multipart/form-data")
    assert r.status_code == 303, r.data[:300]
    sub_url = r.headers["Location"]
    page = alice.get(sub_url).get_data(as_text=True)
    assert "queued" in page and 'http-equiv="refresh"' in page
    calls = []
    w = make_worker(app, replay_runner(calls=calls))
    assert w.drain(timeout=30) == 1
    assert calls == [["copytrace.c", "receiver.c", "sender.c"]]
    page = alice.get(sub_url).get_data(as_text=True)
    assert "Score: <strong>100/100</strong>" in page
    assert 'id="trace-table"' in page and "copy #1 _copy_from_iter" in page
    assert alice.get(sub_url + "/artifacts/kmsg.txt").status_code == 200
    teacher = browser("teacher")
    dash = teacher.get(f"/instructor/assignments/{aid}").get_data(as_text=True)
    assert "graded" in dash
    svg = teacher.get(f"/instructor/assignments/{aid}/histogram.svg")
    assert svg.mimetype == "image/svg+xml" and svg.data.count(b'class="bar"') == 10
    csv = teacher.get(f"/instructor/assignments/{aid}/gradebook.csv").get_data(as_text=True)
    assert '"S1","alice","Alice"' in csv and ',100,100,100,"graded' in csv   # text quoted, scores numbers


def test_the_answers_file_is_graded_apart_and_shown_to_the_instructor(app, browser):
    from tests.service.helpers import ROOT

    alice = browser("alice")
    aid = app.ids["assignment"]
    assert b"answers.txt (optional" in alice.get(f"/assignments/{aid}").data
    answers = (ROOT / "labs" / "lab1" / "solution" / "answers.txt").read_bytes()
    r = alice.post(f"/assignments/{aid}/submit",
                   data=upload_data({**lab_files(), "answers.txt": answers}),
                   content_type="multipart/form-data")
    assert r.status_code == 303, r.data[:300]
    sub_url = r.headers["Location"]
    calls = []
    assert make_worker(app, replay_runner(calls=calls)).drain(timeout=30) == 1
    assert calls == [["answers.txt", "copytrace.c", "receiver.c", "sender.c"]]
    page = alice.get(sub_url).get_data(as_text=True)
    assert "Score: <strong>100/100</strong>" in page      # the questions do not change the lab score
    assert 'id="answers"' not in page
    teacher = browser("teacher")
    page = teacher.get(sub_url).get_data(as_text=True)
    assert 'id="questions-score"' in page and "<strong>10/10</strong>" in page, page[-3000:]
    assert "<code>copy_distance_why</code>" in page and "Loopback hands the very skb" in page
    # the exports carry the questions' score beside the lab's, not added to it
    text = teacher.get(f"/instructor/assignments/{aid}/gradebook.csv").get_data(as_text=True)
    row = next(csv.DictReader(io.StringIO(text)))
    assert (row["final_score"], row["questions_score"], row["questions_max_score"]) == ("100", "10", "10")
    per = teacher.get(f"/instructor/assignments/{aid}/results.json").get_json()
    assert per[0]["questions"]["score"] == 10 and per[0]["final_score"] == 100
