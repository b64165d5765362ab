"""Scheduled events: the CSV calendar (validation, the CLI's checks) and the lift that makes every forecaster
see them (learned from past windows, applied in upcoming ones, in the backtest). The import into PostgreSQL is
in the integration tier."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from prescaler import cli, events, forecasting
from prescaler.backtest import run_backtest
from prescaler.errors import InputError
from prescaler.forecasting.interface import Forecast

MONDAY = datetime(2024, 3, 4, tzinfo=UTC)
H = timedelta(hours=1)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --- the CSV calendar ----------------------------------------------------------------------------------------


def test_naive_times_are_wall_time_of_the_zone_and_offsets_are_kept(tmp_path: Path) -> None:
    f = write(tmp_path / "ev.csv",
              "name,kind,start,end,service\n"
              "spring launch,challenge,2024-03-30T18:00,2024-03-31T03:30,workout-api\n"  # DST change inside
              "push,push,2024-04-02T12:00:00+00:00,2024-04-02T14:00:00+00:00,\n")
    frame = events.read_events_csv(f, timezone="Europe/Berlin")
    assert list(frame["name"]) == ["spring launch", "push"]
    assert frame["start"].iloc[0] == pd.Timestamp("2024-03-30T17:00", tz="UTC")  # CET
    assert frame["end"].iloc[0] == pd.Timestamp("2024-03-31T01:30", tz="UTC")  # CEST
    assert frame["start"].iloc[1] == pd.Timestamp("2024-04-02T12:00", tz="UTC")
    assert frame["service"].iloc[0] == "workout-api" and frame["service"].iloc[1] is None
    assert list(frame["line"]) == [2, 3]


def test_naive_times_default_to_utc_and_service_is_optional(tmp_path: Path) -> None:
    f = write(tmp_path / "ev.csv", "kind,name,end,start\nholiday,Labor Day,1995-09-05T00:00,1995-09-04T00:00\n")
    frame = events.read_events_csv(f)
    assert frame["start"].iloc[0] == pd.Timestamp("1995-09-04", tz="UTC")
    assert frame["service"].iloc[0] is None


@pytest.mark.parametrize(("text", "message"), [
    ("name,kind,start\na,b,2024-01-01T00:00\n", "line 1: bad header .*missing column\\(s\\) end"),
    ("name,kind,start,end,owner\n", "line 1: bad header .*unknown column\\(s\\) 'owner'"),
    ("name,kind,start,end\na,b,2024-01-01T00:00\n", "line 2: expected 4 fields"),
    ("name,kind,start,end\n,b,2024-01-01T00:00,2024-01-01T01:00\n", "line 2: empty name"),
    ("name,kind,start,end\na, ,2024-01-01T00:00,2024-01-01T01:00\n", "line 2: empty kind"),
    ("name,kind,start,end\na,b,yesterday,2024-01-01T01:00\n", "line 2: start: cannot parse timestamp 'yesterday'"),
    ("name,kind,start,end\na,b,2024-01-01T05:00,2024-01-01T04:00\n",
     "line 2: end 2024-01-01T04:00 is before start 2024-01-01T05:00"),
    ("name,kind,start,end\na,b,2024-01-01T05:00,2024-01-01T05:00\n", "line 2: end .* is equal to start"),
    ("name,kind,start,end\na,b,2024-01-01T00:00,2024-01-01T01:00\nc,d,2024-01-02T00:00,2024-01-02T01:00\n"
     "a,b,2024-01-01T00:00,2024-01-01T02:00\n", "line 4: event 'a' .* listed twice \\(first on line 2\\)"),
    ("name,kind,start,end\n", "no events after the header"),
    ("", "empty file"),
])
def test_bad_files_name_the_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        events.read_events_csv(write(tmp_path / "bad.csv", text))


def test_local_times_that_do_not_exist_or_happen_twice_are_refused(tmp_path: Path) -> None:
    f = write(tmp_path / "dst.csv",
              "name,kind,start,end\n"
              "a,x,2024-03-31T02:30,2024-03-31T04:00\n"   # spring forward in Berlin: 02:30 never happened
              "b,x,2024-10-27T02:30,2024-10-27T04:00\n")  # fall back: 02:30 happened twice
    with pytest.raises(InputError) as err:
        events.read_events_csv(f, timezone="Europe/Berlin")
    text = str(err.value)
    assert "line 2: start: 2024-03-31T02:30 does not exist in Europe/Berlin" in text
    assert "line 3: start: 2024-10-27T02:30 happens twice in Europe/Berlin" in text
    assert text.endswith("nothing was written")


def test_several_problems_are_reported_together(tmp_path: Path) -> None:
    f = write(tmp_path / "bad.csv", "name,kind,start,end\n"
              + "".join(f"e{i},k,2024-01-0{i}T05:00,2024-01-0{i}T04:00\n" for i in range(1, 9)))
    with pytest.raises(InputError, match=r"line 2: .*line 6: .*\(and 3 more\); nothing was written"):
        events.read_events_csv(f)


def test_unknown_timezone_and_missing_file(tmp_path: Path) -> None:
    f = write(tmp_path / "ev.csv", "name,kind,start,end\na,b,2024-01-01T00:00,2024-01-01T01:00\n")
    with pytest.raises(InputError, match="unknown time zone 'Mars/Olympus'"):
        events.read_events_csv(f, timezone="Mars/Olympus")
    with pytest.raises(InputError, match="no such file"):
        events.read_events_csv(tmp_path / "nope.csv")


# --- import --------------------------------------------------------------------------------------------------

CALENDAR = ("name,kind,start,end,service\n"
            "spring challenge,challenge,2024-03-06T17:00,2024-03-06T23:00,workout-api\n"
            "streak push,push,2024-03-08T12:00,2024-03-08T14:00,\n")


def test_cli_unknown_timezone_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = write(tmp_path / "ev.csv", CALENDAR)
    assert cli.main(["--database-url", "postgresql://nobody@127.0.0.1:1/none", "events", "import", str(f),
                     "--timezone", "Nowhere/City"]) == cli.EXIT_INPUT
    assert "unknown time zone 'Nowhere/City'" in capsys.readouterr().err


# --- the lift -----------------------------------------------------------------------------------------------


def hourly_week_pattern(weeks: int, start: datetime = MONDAY) -> pd.Series:
    idx = pd.date_range(start, periods=weeks * 7 * 24, freq="1h")
    hour = idx.hour.to_numpy()
    base = 1000.0 + 600.0 * np.sin((hour - 6) / 24 * 2 * np.pi)
    return pd.Series(base, index=idx, name="y")


def launch(at: datetime, hours: int = 4, kind: str = "launch", name: str = "launch") -> dict[str, object]:
    return {"name": name, "kind": kind, "start": pd.Timestamp(at), "end": pd.Timestamp(at + hours * H)}


def with_lift(series: pd.Series, evs: list[dict[str, object]], profile: list[float]) -> pd.Series:
    """Multiply each event's window by the profile (one factor per hour of the window)."""
    out = series.copy()
    for ev in evs:
        window = (out.index >= ev["start"]) & (out.index < ev["end"])
        out[window] = out[window].to_numpy() * np.array(profile[: int(window.sum())])
    return out


def test_mask_covers_every_bucket_an_event_overlaps() -> None:
    s = hourly_week_pattern(1)
    masked = events.mask_events(s, pd.DataFrame([{"name": "a", "kind": "k",
                                                 "start": pd.Timestamp(MONDAY + 2.5 * H),
                                                 "end": pd.Timestamp(MONDAY + 4 * H)}]))
    assert masked.isna().to_numpy().nonzero()[0].tolist() == [2, 3]
    assert events.mask_events(s, None) is s


def test_lift_is_learned_per_kind_and_part_of_the_window() -> None:
    s = hourly_week_pattern(6)
    past = [launch(MONDAY + timedelta(days=d, hours=17)) for d in (9, 16, 23, 30)]
    s = with_lift(s, past, [2.0, 1.8, 1.6, 1.4])
    lifts = events.learn_lifts(s, pd.DataFrame(past))
    assert set(lifts) == {"launch"}
    assert lifts["launch"].events == 4 and lifts["launch"].source == "learned"
    assert np.allclose(lifts["launch"].ratio, [2.0, 1.8, 1.6, 1.4], rtol=0.02)


def test_an_event_still_running_at_the_end_is_masked_but_not_learned_from() -> None:
    s = hourly_week_pattern(3)
    running = launch(pd.Timestamp(s.index[-2]).to_pydatetime())
    assert events.learn_lifts(s, pd.DataFrame([running])) == {}
    assert events.mask_events(s, pd.DataFrame([running])).iloc[-2:].isna().all()


def test_a_kind_never_seen_uses_its_stated_lift() -> None:
    s = hourly_week_pattern(2)
    ev = pd.DataFrame([{**launch(MONDAY + timedelta(days=20)), "lift_percent": 50.0}])
    lifts = events.learn_lifts(s, ev)
    assert lifts["launch"].source == "stated" and lifts["launch"].ratio == (1.5,) * events.LIFT_BINS


def test_lift_applies_in_the_window_and_overlaps_take_the_larger() -> None:
    ds = pd.date_range(MONDAY, periods=12, freq="1h")
    fc = Forecast(ds=ds, yhat=np.full(12, 100.0), lower=np.full(12, 80.0), upper=np.full(12, 120.0), model="m")
    lifts = {"big": events.KindLift("big", (2.0,) * 4, (1.5,) * 4, (3.0,) * 4, 3, "learned"),
             "small": events.KindLift("small", (1.2,) * 4, (1.1,) * 4, (1.3,) * 4, 3, "learned")}
    ev = pd.DataFrame([launch(MONDAY + 2 * H, 4, "small"), launch(MONDAY + 4 * H, 4, "big")])
    out = events.apply_lifts(fc, ev, lifts)
    assert out.yhat.tolist() == [100, 100, 120, 120, 200, 200, 200, 200, 100, 100, 100, 100]
    assert out.upper[4] == 360 and out.lower[4] == 120 and out.upper[2] == pytest.approx(156)
    assert events.lifts_of(out) == pytest.approx({"big": 2.0, "small": 1.2})


def test_any_forecaster_moves_with_events() -> None:
    """Seasonal-naive copies last week: without events it repeats last week's launch and misses this one."""
    s = hourly_week_pattern(5)
    past = [launch(MONDAY + timedelta(days=d, hours=17)) for d in (3, 10, 16, 24, 29)]
    coming = launch(MONDAY + timedelta(days=36, hours=9))  # a different time of week than any before
    s = with_lift(s, past, [2.0, 1.8, 1.6, 1.4])
    cal = pd.DataFrame([*past, coming])
    plain = forecasting.fit_predict("seasonal-naive", s, timedelta(days=2)).forecast
    aware = events.fit_predict("seasonal-naive", s, timedelta(days=2), events=cal).forecast
    idx = aware.ds.get_indexer(pd.date_range(pd.Timestamp(str(coming["start"])), periods=4, freq="1h"))
    truth = hourly_week_pattern(6).reindex(aware.ds)  # the traffic without any event
    base = truth.to_numpy()[idx]
    assert np.allclose(aware.yhat[idx] / base, [2.0, 1.8, 1.6, 1.4], rtol=0.05)
    assert np.allclose(plain.yhat[idx] / base, 1.0, rtol=0.05)
    # Last week's launch (day 29, 17:00) is masked: the aware forecast does not repeat it on day 36.
    echo = aware.ds.get_indexer(pd.date_range(MONDAY + timedelta(days=36, hours=17), periods=4, freq="1h"))
    assert np.allclose(aware.yhat[echo] / truth.to_numpy()[echo], 1.0, rtol=0.05)
    assert plain.yhat[echo][0] / truth.to_numpy()[echo][0] > 1.9
    # Without events the wrapper is the forecaster itself.
    same = events.fit_predict("seasonal-naive", s, timedelta(days=2), events=None).forecast
    assert np.array_equal(same.yhat, plain.yhat)


def test_event_aware_wraps_the_forecaster_protocol() -> None:
    s = hourly_week_pattern(3)
    past = [launch(MONDAY + timedelta(days=d, hours=17)) for d in (3, 10)]
    coming = launch(MONDAY + timedelta(days=21, hours=10))
    s = with_lift(s, past, [3.0] * 4)
    model = events.EventAware(forecasting.make_forecaster("seasonal-naive", step=H))
    fc = model.fit(s, pd.DataFrame([*past, coming])).predict(timedelta(days=1))
    assert model.name == "seasonal-naive" and model.lifts["launch"].events == 2
    i = int(fc.ds.get_indexer(pd.DatetimeIndex([pd.Timestamp(str(coming["start"]))]))[0])
    assert fc.yhat[i] / hourly_week_pattern(4).reindex(fc.ds).to_numpy()[i] == pytest.approx(3.0, rel=0.05)


def test_the_operators_fit_pool_lifts_every_model_in_its_workers() -> None:
    """The operator's FitPool runs `events.fit_in_worker` in its worker processes: a scheduled launch moves a
    seasonal-naive fit there as in the backtest."""
    s = hourly_week_pattern(5)
    past = [launch(MONDAY + timedelta(days=d, hours=17)) for d in (3, 10, 16, 24, 29)]
    coming = launch(MONDAY + timedelta(days=36, hours=9))
    s = with_lift(s, past, [2.0, 1.8, 1.6, 1.4])
    pool = forecasting.FitPool(max_workers=1, timeout_s=120, fit=events.fit_in_worker)
    try:
        fc = pool.submit("seasonal-naive", s, timedelta(days=2), events=pd.DataFrame([*past, coming])) \
            .result(timeout=120).forecast
    finally:
        pool.shutdown()
    idx = fc.ds.get_indexer(pd.date_range(pd.Timestamp(str(coming["start"])), periods=4, freq="1h"))
    base = hourly_week_pattern(6).reindex(fc.ds).to_numpy()[idx]
    assert np.allclose(fc.yhat[idx] / base, [2.0, 1.8, 1.6, 1.4], rtol=0.05)


# --- in the backtest ----------------------------------------------------------------------------------------


def _launch_trace() -> tuple[pd.Series, pd.DataFrame]:
    """Five weeks hourly; a 4-hour launch tripling traffic every 3-4 days at irregular times of day."""
    s = hourly_week_pattern(5)
    rng = np.random.default_rng(3)
    days = np.cumsum(rng.integers(3, 5, size=10))
    evs = [launch(MONDAY + timedelta(days=int(d), hours=int(rng.integers(8, 16))), name=f"launch {i}")
           for i, d in enumerate(days) if d < 34]
    return with_lift(s, evs, [3.0, 2.6, 2.2, 1.8]), pd.DataFrame(evs)


def test_backtest_with_the_calendar_leaves_less_unserved() -> None:
    s, cal = _launch_trace()
    kw: dict[str, object] = {"capacity": 200.0, "startup_delay": H, "model": "seasonal-naive", "progress": False,
                             "last": timedelta(days=21), "frontier_headrooms": (0, 10)}
    blind = run_backtest(s, **kw)  # type: ignore[arg-type]
    seeing = run_backtest(s, events=cal, **kw)  # type: ignore[arg-type]
    assert seeing.kpis["predictive"].unserved_pct < 0.5 * blind.kpis["predictive"].unserved_pct
    assert seeing.settings["events"] == len(cal)
    assert seeing.settings["event_lifts"]["launch"] == pytest.approx(2.4, rel=0.1)
    assert blind.settings["event_lifts"] == {}


def test_cli_backtest_reads_the_calendar_and_rejects_a_bad_one_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    s, cal = _launch_trace()
    trace = tmp_path / "trace.csv"
    stamps = pd.DatetimeIndex(s.index).strftime("%Y-%m-%dT%H:%M")
    pd.DataFrame({"ds": stamps, "y": s.round().astype(int)}).to_csv(trace, index=False)
    good = tmp_path / "cal.csv"
    pd.DataFrame({"name": cal["name"], "kind": cal["kind"], "start": cal["start"].dt.strftime("%Y-%m-%dT%H:%M"),
                  "end": cal["end"].dt.strftime("%Y-%m-%dT%H:%M")}).to_csv(good, index=False)
    out = tmp_path / "bt.json"
    base = ["backtest", "--input", str(trace), "--capacity", "200", "--startup-delay", "1h", "--model",
            "seasonal-naive", "--last", "21d", "--no-progress"]
    assert cli.main([*base, "--events", str(good), "--json", str(out)]) == 0
    assert '"events": ' + str(len(cal)) in out.read_text()
    bad = write(tmp_path / "bad.csv", "name,kind,start,end\nx,launch,2024-03-10T10:00,2024-03-10T09:00\n")
    capsys.readouterr()
    assert cli.main([*base, "--events", str(bad), "--json", str(tmp_path / "no.json")]) == cli.EXIT_INPUT
    assert "line 2: end 2024-03-10T09:00 is before start" in capsys.readouterr().err
    assert not (tmp_path / "no.json").exists()
