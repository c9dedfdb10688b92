"""EventBridge Scheduler expressions: parsing rules, time zones and DST, L/W/#, rate, at, date bounds, due_between.

Expected run times are worked out by hand in the comments (2027-01-01 is a Friday; Europe/Berlin moves to summer
time on Sunday 2027-03-28 at 02:00 and back on Sunday 2027-10-31 at 03:00).
"""

from __future__ import annotations

import calendar
import itertools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from aws_croniter import AwsCroniter
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from taskrunner.schedule_expressions import (
    ScheduleExpression,
    ScheduleExpressionError,
    due_between,
    next_run_times,
    parse_schedule_expression,
    parse_timezone,
)

BERLIN = "Europe/Berlin"


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def runs(text: str, timezone: str, after: datetime, count: int = 5, **bounds: datetime) -> list[datetime]:
    return next_run_times(parse_schedule_expression(text), timezone, after, count, **bounds)


def rejection(text: str) -> ScheduleExpressionError:
    with pytest.raises(ScheduleExpressionError) as info:
        parse_schedule_expression(text)
    assert info.value.field == "schedule_expression"
    return info.value


# ---------------------------------------------------------------------------------------------------------------------
# Parsing: valid expressions


@pytest.mark.parametrize(
    "text",
    [
        "cron(0 3 * * ? *)",
        "cron(0/5 * * * ? *)",
        "cron(*/5 * * * ? *)",
        "cron(0 12 L * ? *)",
        "cron(0 10 L-3 * ? *)",
        "cron(0 9 15W * ? *)",
        "cron(0 10 ? * 6#3 *)",
        "cron(0 10 ? * FRI#3 *)",
        "cron(0 10 ? * 6L *)",
        "cron(0 10 ? * L *)",
        "cron(0 8 ? * MON-FRI *)",
        "cron(0 8 ? * mon,wed,fri 2027-2030)",
        "cron(0 8 1 JAN,JUL ? *)",
        "cron(0-30/10 8-17 ? * 2-6 *)",
        "cron(0 0 29 2 ? *)",
        "  cron(0 3 * * ? *)  ",
    ],
)
def test_given_valid_aws_cron_when_parsed_then_kind_is_cron_with_six_fields(text):
    expression = parse_schedule_expression(text)
    assert expression.kind == "cron"
    assert expression.text == text.strip()
    assert expression.cron_fields is not None and len(expression.cron_fields) == 6
    assert expression.rate is None and expression.at is None


@pytest.mark.parametrize(
    ("text", "interval"),
    [
        ("rate(1 minute)", timedelta(minutes=1)),
        ("rate(5 minutes)", timedelta(minutes=5)),
        ("rate(1 hour)", timedelta(hours=1)),
        ("rate(12 hours)", timedelta(hours=12)),
        ("rate(1 day)", timedelta(days=1)),
        ("rate(7 days)", timedelta(days=7)),
    ],
)
def test_given_valid_rate_when_parsed_then_interval_is_a_timedelta(text, interval):
    expression = parse_schedule_expression(text)
    assert (expression.kind, expression.rate, expression.text) == ("rate", interval, text)


def test_given_valid_at_when_parsed_then_it_is_a_naive_wall_clock_time():
    expression = parse_schedule_expression("at(2027-03-28T09:30:00)")
    assert expression == ScheduleExpression(kind="at", text="at(2027-03-28T09:30:00)", at=datetime(2027, 3, 28, 9, 30))
    assert expression.at is not None and expression.at.tzinfo is None


def test_given_a_parsed_expression_when_hashed_then_it_is_a_frozen_value():
    assert parse_schedule_expression("rate(5 minutes)") == parse_schedule_expression("rate(5 minutes)")
    assert len({parse_schedule_expression("cron(0 3 * * ? *)"), parse_schedule_expression("cron(0 3 * * ? *)")}) == 1
    with pytest.raises(AttributeError):
        parse_schedule_expression("rate(5 minutes)").text = "x"  # type: ignore[misc]


# ---------------------------------------------------------------------------------------------------------------------
# Parsing: each rule's message


@pytest.mark.parametrize("text", ["*/5 * * * *", "cron(*/5 * * * *)", "cron(0 3 * * 1)"])
def test_given_unix_five_field_cron_when_parsed_then_message_explains_the_aws_format(text):
    error = rejection(text)
    assert "AWS cron has six fields" in error.rule
    assert "minutes hours day-of-month month day-of-week year" in error.rule
    assert "one of day-of-month and day-of-week must be ?" in error.rule


def test_given_unix_cron_with_any_day_of_week_when_parsed_then_message_suggests_its_aws_form():
    assert "cron(*/5 * * * ? *)" in rejection("*/5 * * * *").rule


def test_given_six_fields_without_the_cron_wrapper_when_parsed_then_message_shows_the_wrapped_form():
    assert "cron(0 3 * * ? *)" in rejection("0 3 * * ? *").rule


@pytest.mark.parametrize("text", ["cron(0 3 * * ? * *)", "cron(0 3 *)", "cron()"])
def test_given_wrong_number_of_cron_fields_when_parsed_then_message_says_six_fields(text):
    assert "six fields" in rejection(text).rule


def test_given_both_day_fields_when_parsed_then_one_must_be_a_question_mark():
    error = rejection("cron(0 10 1 * MON *)")
    assert "one of day-of-month or day-of-week must be '?'" in error.rule
    assert "cron(0 10 1 * ? *)" in error.rule and "cron(0 10 ? * MON *)" in error.rule


def test_given_neither_day_field_when_parsed_then_only_one_may_be_a_question_mark():
    assert "not both" in rejection("cron(0 10 ? * ? *)").rule


@pytest.mark.parametrize(
    ("text", "field", "allowed"),
    [
        ("cron(61 * * * ? *)", "minutes", "0-59"),
        ("cron(60 * * * ? *)", "minutes", "0-59"),
        ("cron(0 24 * * ? *)", "hours", "0-23"),
        ("cron(0 0 32 * ? *)", "day-of-month", "1-31"),
        ("cron(0 0 0 * ? *)", "day-of-month", "1-31"),
        ("cron(0 0 1 13 ? *)", "month", "1-12"),
        ("cron(0 0 1 FOO ? *)", "month", "JAN-DEC"),
        ("cron(0 0 ? * 8 *)", "day-of-week", "1-7"),
        ("cron(0 0 ? * 0 *)", "day-of-week", "1 is Sunday"),
        ("cron(0 0 ? * 6#6 *)", "day-of-week", "1-7"),
        ("cron(0 0 1 * ? 1969)", "year", "1970-2199"),
        ("cron(0 0 1 * ? 2200)", "year", "1970-2199"),
    ],
)
def test_given_field_out_of_range_when_parsed_then_message_names_the_field_and_its_range(text, field, allowed):
    error = rejection(text)
    assert f"the {field} field" in error.rule
    assert allowed in error.rule


@pytest.mark.parametrize(
    ("text", "phrase"),
    [
        ("cron(0/0 * * * ? *)", "increment after / must be at least 1"),
        ("cron(0 */00 * * ? *)", "increment after / must be at least 1"),
        ("cron(*-5 * * * ? *)", "a range needs two values"),
        ("cron(5-* * * * ? *)", "a range needs two values"),
        ("cron(0 0 LW * ? *)", "'LW' is not supported"),
        ("cron(0 0 ? * L-2 *)", "6L for the last Friday"),
    ],
)
def test_given_syntax_aws_croniter_crashes_on_when_parsed_then_a_clear_rule_is_given(text, phrase):
    assert phrase in rejection(text).rule


@pytest.mark.parametrize("text", ["cron(0 0 30 2 ? *)", "cron(0 0 31 4,6,9,11 ? *)", "cron(0 0 29 2 ? 2100-2103)"])
def test_given_cron_matching_no_date_when_parsed_then_it_never_runs(text):
    assert "never runs" in rejection(text).rule


@pytest.mark.parametrize(
    ("text", "phrase"),
    [
        ("rate(1 minutes)", "singular unit with 1: rate(1 minute)"),
        ("rate(1 hours)", "rate(1 hour)"),
        ("rate(1 days)", "rate(1 day)"),
        ("rate(5 minute)", "plural unit with 5: rate(5 minutes)"),
        ("rate(30 seconds)", "the minimum rate is 1 minute"),
        ("rate(1 second)", "the minimum rate is 1 minute"),
        ("rate(0 minutes)", "the minimum rate is 1 minute"),
        ("rate(-5 minutes)", "the minimum rate is 1 minute"),
        ("rate(1.5 hours)", "whole number"),
        ("rate(five minutes)", "whole number"),
        ("rate(+5 minutes)", "whole number"),
        ("rate(99999999999 days)", "too long"),
        ("rate(2 weeks)", "minute(s), hour(s) or day(s)"),
        ("rate(5)", "rate(value unit)"),
        ("rate()", "rate(value unit)"),
    ],
)
def test_given_invalid_rate_when_parsed_then_message_states_the_rate_rule(text, phrase):
    assert phrase in rejection(text).rule


@pytest.mark.parametrize(
    ("text", "phrase"),
    [
        ("at(2027-02-30T10:00:00)", "not a real date"),
        ("at(2027-13-01T10:00:00)", "not a real date"),
        ("at(2027-03-28T24:00:00)", "not a real date"),
        ("at(2027-03-28 09:30:00)", "at(yyyy-mm-ddThh:mm:ss)"),
        ("at(2027-03-28T09:30)", "at(yyyy-mm-ddThh:mm:ss)"),
        ("at(2027-03-28T09:30:00Z)", "at(yyyy-mm-ddThh:mm:ss)"),
        ("at(2027-03-28T09:30:00+01:00)", "at(yyyy-mm-ddThh:mm:ss)"),
        ("at(1969-12-31T23:00:00)", "must be 1970-2199"),
        ("at(2200-01-01T00:00:00)", "must be 1970-2199"),
    ],
)
def test_given_invalid_at_when_parsed_then_message_shows_the_at_format(text, phrase):
    assert phrase in rejection(text).rule


@pytest.mark.parametrize(
    "text", ["", "   ", "every 5 minutes", "daily", "schedule(0 3 * * ? *)", "CRON(0 3 * * ? *)", "cron(0 3 * * ? *"]
)
def test_given_anything_else_when_parsed_then_message_lists_the_three_forms(text):
    rule = rejection(text).rule
    assert "cron(minutes hours day-of-month month day-of-week year)" in rule
    assert "rate(value unit)" in rule
    assert "at(yyyy-mm-ddThh:mm:ss)" in rule


def test_given_an_unclosed_parenthesis_when_parsed_then_message_points_at_the_parentheses():
    assert "check the parentheses" in rejection("cron(0 3 * * ? *").rule


def test_given_an_error_when_printed_then_it_names_field_and_rule_and_is_a_value_error():
    error = rejection("rate(0 minutes)")
    assert isinstance(error, ValueError)
    assert str(error).startswith("schedule_expression: the minimum rate is 1 minute")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_given_any_text_when_parsed_then_only_a_schedule_expression_error_can_escape(text):
    try:
        parse_schedule_expression(text)
    except ScheduleExpressionError as error:
        assert error.field == "schedule_expression" and error.rule


CRON_TOKENS = [
    "*", "?", "0", "5", "15", "30", "59", "60", "1-5", "5-1", "*/5", "0/15", "0/0", "*-5", "5-*", "L", "L-3", "L-30",
    "LW", "15W", "1W", "31W", "6#3", "1#5", "FRI#3", "6L", "L-2", "MON-FRI", "FRI-MON", "JAN", "JAN-MAR", "2", "29",
    "31", "1,15", "2027", "2027-2030", "1969", "2199", "", "#", "W", "3-2/2",
]  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(CRON_TOKENS), min_size=6, max_size=6))
def test_given_fuzzed_cron_fields_when_parsed_and_run_then_no_library_error_escapes(fields):
    try:
        expression = parse_schedule_expression(f"cron({' '.join(fields)})")
    except ScheduleExpressionError as error:
        assert error.field == "schedule_expression" and error.rule
        return
    times = next_run_times(expression, BERLIN, utc(2027, 1, 1), 3)
    assert times == sorted(set(times))
    assert all(t.tzinfo is UTC and t > utc(2027, 1, 1) for t in times)


# ---------------------------------------------------------------------------------------------------------------------
# Time zones


def test_given_known_iana_name_when_parsed_then_a_zoneinfo_is_returned():
    assert parse_timezone(BERLIN) == ZoneInfo(BERLIN)
    assert parse_timezone("UTC") == ZoneInfo("UTC")


@pytest.mark.parametrize("name", ["Mars/Olympus_Mons", "", "CEST", "../etc/passwd", "/usr/share/zoneinfo/UTC"])
def test_given_unknown_timezone_when_parsed_then_field_is_timezone(name):
    with pytest.raises(ScheduleExpressionError) as info:
        parse_timezone(name)
    assert info.value.field == "timezone"
    assert "time zone" in info.value.rule


def test_given_misspelt_timezone_when_parsed_then_message_suggests_the_close_name():
    with pytest.raises(ScheduleExpressionError) as info:
        parse_timezone("Europe/Berln")
    assert "unknown time zone 'Europe/Berln'" in info.value.rule and "'Europe/Berlin'" in info.value.rule


def test_given_unknown_timezone_when_next_run_times_then_field_is_timezone():
    with pytest.raises(ScheduleExpressionError) as info:
        runs("cron(0 3 * * ? *)", "Europe/Atlantis", utc(2027, 1, 1))
    assert info.value.field == "timezone"


# ---------------------------------------------------------------------------------------------------------------------
# Cron in a time zone, across DST


def test_given_3am_berlin_when_spring_dst_change_then_it_stays_3am_berlin():
    # CET (UTC+1) until Sunday 2027-03-28 02:00, then CEST (UTC+2): 03:00 Berlin is 02:00 UTC before, 01:00 UTC after.
    times = runs("cron(0 3 * * ? *)", BERLIN, datetime(2027, 3, 25, tzinfo=ZoneInfo(BERLIN)))
    assert times == [
        utc(2027, 3, 25, 2),
        utc(2027, 3, 26, 2),
        utc(2027, 3, 27, 2),
        utc(2027, 3, 28, 1),
        utc(2027, 3, 29, 1),
    ]
    assert {t.astimezone(ZoneInfo(BERLIN)).hour for t in times} == {3}


def test_given_3am_berlin_when_autumn_dst_change_then_it_stays_3am_berlin():
    # CEST until Sunday 2027-10-31 03:00, then CET: 03:00 Berlin is 01:00 UTC before, 02:00 UTC from the 31st on.
    times = runs("cron(0 3 * * ? *)", BERLIN, datetime(2027, 10, 29, tzinfo=ZoneInfo(BERLIN)))
    assert times == [
        utc(2027, 10, 29, 1),
        utc(2027, 10, 30, 1),
        utc(2027, 10, 31, 2),
        utc(2027, 11, 1, 2),
        utc(2027, 11, 2, 2),
    ]


def test_given_same_cron_in_utc_when_dst_changes_elsewhere_then_utc_time_does_not_move():
    times = runs("cron(0 3 * * ? *)", "UTC", utc(2027, 3, 26))
    assert times == [
        utc(2027, 3, 26, 3),
        utc(2027, 3, 27, 3),
        utc(2027, 3, 28, 3),
        utc(2027, 3, 29, 3),
        utc(2027, 3, 30, 3),
    ]


def test_given_a_time_in_the_spring_gap_when_the_clock_skips_it_then_that_run_is_skipped():
    # 02:30 Berlin does not exist on 2027-03-28 (02:00 -> 03:00): AWS skips the invocation.
    times = runs("cron(30 2 * * ? *)", BERLIN, utc(2027, 3, 26, 12), 3)
    assert times == [utc(2027, 3, 27, 1, 30), utc(2027, 3, 29, 0, 30), utc(2027, 3, 30, 0, 30)]


def test_given_a_time_in_the_repeated_autumn_hour_when_it_happens_twice_then_it_runs_once_at_the_first():
    # 02:30 Berlin happens at 00:30 UTC (CEST) and again at 01:30 UTC (CET) on 2027-10-31: AWS runs it once.
    times = runs("cron(30 2 * * ? *)", BERLIN, utc(2027, 10, 30, 12), 3)
    assert times == [utc(2027, 10, 31, 0, 30), utc(2027, 11, 1, 1, 30), utc(2027, 11, 2, 1, 30)]


def test_given_half_hourly_cron_when_autumn_hour_repeats_then_the_repeated_hour_does_not_run_again():
    # 02:00 and 02:30 CEST run; the second 02:00 and 02:30 (CET) do not; then 03:00 CET = 02:00 UTC.
    times = runs("cron(0/30 * * * ? *)", BERLIN, utc(2027, 10, 30, 23, 45), 4)
    assert times == [
        utc(2027, 10, 31, 0, 0),
        utc(2027, 10, 31, 0, 30),
        utc(2027, 10, 31, 2, 0),
        utc(2027, 10, 31, 2, 30),
    ]


def test_given_after_inside_the_second_pass_of_the_repeated_hour_when_next_runs_then_none_is_in_the_past():
    # 01:10 UTC is 02:10 CET, the second pass: 02:30 Berlin already ran at 00:30 UTC, so the next is 03:00 CET.
    assert runs("cron(0/30 * * * ? *)", BERLIN, utc(2027, 10, 31, 1, 10), 2) == [
        utc(2027, 10, 31, 2),
        utc(2027, 10, 31, 2, 30),
    ]
    assert runs("cron(30 2 * * ? *)", BERLIN, utc(2027, 10, 31, 1, 10), 1) == [utc(2027, 11, 1, 1, 30)]


def test_given_weekday_business_hours_in_new_york_when_dst_starts_then_9am_local_is_kept():
    # New York moves to EDT on Sunday 2027-03-14: 09:00 is 14:00 UTC on Friday the 12th, 13:00 UTC from Monday the 15th.
    times = runs("cron(0 9 ? * MON-FRI *)", "America/New_York", utc(2027, 3, 12), 3)
    assert times == [utc(2027, 3, 12, 14), utc(2027, 3, 15, 13), utc(2027, 3, 16, 13)]


def test_given_after_with_seconds_when_next_runs_then_results_are_strictly_after_it():
    assert runs("cron(* * * * ? *)", "UTC", utc(2027, 1, 1, 10, 0, 0), 2) == [
        utc(2027, 1, 1, 10, 1),
        utc(2027, 1, 1, 10, 2),
    ]
    assert runs("cron(* * * * ? *)", "UTC", utc(2027, 1, 1, 10, 0, 59), 1) == [utc(2027, 1, 1, 10, 1)]


def test_given_after_in_another_offset_when_next_runs_then_results_are_utc():
    after = datetime(2027, 1, 1, 12, tzinfo=ZoneInfo("Asia/Tokyo"))  # 03:00 UTC
    [first] = runs("cron(0 * * * ? *)", "UTC", after, 1)
    assert first == utc(2027, 1, 1, 4) and first.tzinfo is UTC


ZONES = [
    "UTC",
    BERLIN,
    "America/New_York",
    "Australia/Sydney",
    "Australia/Lord_Howe",
    "Asia/Kolkata",
    "Pacific/Chatham",
]


@settings(max_examples=150, deadline=None)
@given(
    zone=st.sampled_from(ZONES),
    hour=st.integers(0, 23),
    minute=st.sampled_from([0, 15, 30, 45, 59]),
    after=st.datetimes(datetime(2026, 1, 1), datetime(2030, 12, 31), timezones=st.just(UTC)),
)
def test_given_daily_cron_in_any_zone_when_next_runs_then_each_is_that_wall_time_once_a_day(zone, hour, minute, after):
    tz = ZoneInfo(zone)
    times = runs(f"cron({minute} {hour} * * ? *)", zone, after, 6)
    assert len(times) == 6 and times == sorted(times) and times[0] > after
    local = [t.astimezone(tz) for t in times]
    assert all((t.hour, t.minute) == (hour, minute) for t in local)
    assert all(t.fold == 0 for t in local)  # a repeated wall-clock time runs at its first occurrence
    dates = [t.date() for t in local]
    for previous, current in itertools.pairwise(dates):
        day = previous + timedelta(days=1)
        while day < current:  # a day without a run is a day on which that wall-clock time does not exist
            wall = datetime(day.year, day.month, day.day, hour, minute, tzinfo=tz)
            assert wall.astimezone(UTC).astimezone(tz).replace(tzinfo=None) != wall.replace(tzinfo=None)
            day += timedelta(days=1)


# ---------------------------------------------------------------------------------------------------------------------
# L, W and #


def test_given_L_in_day_of_month_when_next_runs_then_last_day_of_each_month_including_leap_february():
    times = runs("cron(0 12 L * ? *)", "UTC", utc(2028, 1, 15), 4)
    assert times == [utc(2028, 1, 31, 12), utc(2028, 2, 29, 12), utc(2028, 3, 31, 12), utc(2028, 4, 30, 12)]


def test_given_L_in_berlin_when_next_runs_then_noon_berlin_on_the_last_day():
    times = runs("cron(0 12 L * ? *)", BERLIN, utc(2027, 1, 15), 3)
    assert times == [utc(2027, 1, 31, 11), utc(2027, 2, 28, 11), utc(2027, 3, 31, 10)]  # CET, CET, CEST


def test_given_L_minus_3_when_next_runs_then_three_days_before_the_last_day():
    times = runs("cron(0 10 L-3 * ? *)", "UTC", utc(2027, 1, 1), 3)
    assert times == [utc(2027, 1, 28, 10), utc(2027, 2, 25, 10), utc(2027, 3, 28, 10)]


def test_given_15W_when_next_runs_then_nearest_weekday_to_the_15th():
    # 2027-05-15 is a Saturday -> Friday 14th; 06-15 Tuesday; 07-15 Thursday; 08-15 Sunday -> Monday 16th.
    times = runs("cron(0 9 15W * ? *)", "UTC", utc(2027, 5, 1), 4)
    assert times == [utc(2027, 5, 14, 9), utc(2027, 6, 15, 9), utc(2027, 7, 15, 9), utc(2027, 8, 16, 9)]


def test_given_1W_on_a_saturday_first_when_next_runs_then_monday_the_3rd_not_the_previous_month():
    # 2027-05-01 is a Saturday: the nearest weekday inside May is Monday the 3rd.
    assert runs("cron(0 9 1W * ? *)", "UTC", utc(2027, 4, 30), 1) == [utc(2027, 5, 3, 9)]


def test_given_hash_when_next_runs_then_third_friday_of_each_month():
    # Fridays: January 2027 -> 1, 8, 15; February (1st is a Monday) -> 5, 12, 19; March (Monday) -> 5, 12, 19.
    expected = [utc(2027, 1, 15, 10), utc(2027, 2, 19, 10), utc(2027, 3, 19, 10)]
    assert runs("cron(0 10 ? * 6#3 *)", "UTC", utc(2027, 1, 1), 3) == expected
    assert runs("cron(0 10 ? * FRI#3 *)", "UTC", utc(2027, 1, 1), 3) == expected


def test_given_6L_when_next_runs_then_last_friday_of_each_month():
    times = runs("cron(0 10 ? * 6L *)", "UTC", utc(2027, 1, 1), 3)
    assert times == [utc(2027, 1, 29, 10), utc(2027, 2, 26, 10), utc(2027, 3, 26, 10)]


def test_given_L_in_day_of_week_when_next_runs_then_saturdays():
    # L alone in day-of-week is the last day of the week, Saturday (7): 2027-01-02, 09 and 16.
    times = runs("cron(0 10 ? * L *)", "UTC", utc(2027, 1, 1), 3)
    assert times == [utc(2027, 1, 2, 10), utc(2027, 1, 9, 10), utc(2027, 1, 16, 10)]


def test_given_mon_fri_names_when_next_runs_then_weekdays_only():
    times = runs("cron(0 8 ? * MON-FRI *)", "UTC", utc(2027, 1, 1, 9), 5)  # after Friday's run
    assert times == [utc(2027, 1, d, 8) for d in (4, 5, 6, 7, 8)]


def test_given_month_names_when_next_runs_then_only_those_months():
    assert runs("cron(0 8 1 JAN,JUL ? *)", "UTC", utc(2027, 1, 2), 2) == [utc(2027, 7, 1, 8), utc(2028, 1, 1, 8)]


@settings(max_examples=120, deadline=None)
@given(year=st.integers(2027, 2060), month=st.integers(1, 12), aws_weekday=st.integers(1, 7), nth=st.integers(1, 5))
def test_given_nth_weekday_of_a_month_when_computed_then_calendar_agrees(year, month, aws_weekday, nth):
    python_weekday = (aws_weekday + 5) % 7  # AWS 1 = Sunday; Python 0 = Monday
    days = [
        d
        for d in range(1, calendar.monthrange(year, month)[1] + 1)
        if calendar.weekday(year, month, d) == python_weekday
    ]
    text = f"cron(0 0 ? {month} {aws_weekday}#{nth} {year})"
    if nth > len(days):
        assert "never runs" in rejection(text).rule
    else:
        assert runs(text, "UTC", utc(year, 1, 1) - timedelta(minutes=1), 2) == [utc(year, month, days[nth - 1])]


@settings(max_examples=120, deadline=None)
@given(year=st.integers(2027, 2060), month=st.integers(1, 12), day=st.integers(1, 31))
def test_given_nW_and_L_when_computed_then_the_nearest_weekday_rule_agrees(year, month, day):
    last = calendar.monthrange(year, month)[1]
    assume(day <= last)
    weekday = calendar.weekday(year, month, day)
    if weekday < 5:
        expected = day
    elif weekday == 5:  # Saturday: the Friday before, unless that leaves the month
        expected = day - 1 if day > 1 else day + 2
    else:  # Sunday: the Monday after, unless that leaves the month
        expected = day + 1 if day < last else day - 2
    start = utc(year, month, 1) - timedelta(minutes=1)
    assert runs(f"cron(0 0 {day}W {month} ? {year})", "UTC", start, 1) == [utc(year, month, expected)]
    assert runs(f"cron(0 0 L {month} ? {year})", "UTC", start, 1) == [utc(year, month, last)]


# ---------------------------------------------------------------------------------------------------------------------
# rate and at


def test_given_rate_with_start_date_when_after_is_later_then_runs_are_start_plus_multiples():
    times = runs("rate(5 minutes)", "UTC", utc(2027, 1, 1, 10, 7), 3, start_date=utc(2027, 1, 1, 10))
    assert times == [utc(2027, 1, 1, 10, 10), utc(2027, 1, 1, 10, 15), utc(2027, 1, 1, 10, 20)]


def test_given_rate_with_future_start_date_when_next_runs_then_first_run_is_the_start_date():
    times = runs("rate(2 hours)", "UTC", utc(2027, 1, 1), 3, start_date=utc(2027, 1, 2, 9, 30, 15))
    assert times == [utc(2027, 1, 2, 9, 30, 15), utc(2027, 1, 2, 11, 30, 15), utc(2027, 1, 2, 13, 30, 15)]


def test_given_rate_without_start_date_when_next_runs_then_counted_from_after():
    times = runs("rate(5 minutes)", "UTC", utc(2027, 1, 1, 10, 7, 30), 2)
    assert times == [utc(2027, 1, 1, 10, 12, 30), utc(2027, 1, 1, 10, 17, 30)]


def test_given_rate_in_days_when_dst_changes_then_a_day_is_24_hours_not_a_calendar_day():
    # 10:00 CET on the 27th; 24 hours later it is 11:00 CEST on the 28th (AWS: "days" is a 24-hour duration).
    start = datetime(2027, 3, 27, 10, tzinfo=ZoneInfo(BERLIN))
    times = runs("rate(1 day)", BERLIN, start - timedelta(seconds=1), 2, start_date=start)
    assert times == [utc(2027, 3, 27, 9), utc(2027, 3, 28, 9)]
    assert times[1].astimezone(ZoneInfo(BERLIN)).hour == 11


def test_given_rate_with_end_date_when_next_runs_then_end_date_is_inclusive():
    times = runs(
        "rate(5 minutes)", "UTC", utc(2027, 1, 1), 10, start_date=utc(2027, 1, 1, 10), end_date=utc(2027, 1, 1, 10, 15)
    )
    assert times == [utc(2027, 1, 1, 10, m) for m in (0, 5, 10, 15)]


@settings(max_examples=100, deadline=None)
@given(
    value=st.integers(1, 90),
    unit=st.sampled_from(["minute", "hour", "day"]),
    start=st.datetimes(datetime(2026, 1, 1), datetime(2028, 1, 1), timezones=st.just(UTC)),
    offset=st.timedeltas(timedelta(days=-3), timedelta(days=400)),
)
def test_given_any_rate_when_next_runs_then_runs_are_the_start_plus_whole_intervals(value, unit, start, offset):
    text = f"rate({value} {unit}{'s' if value > 1 else ''})"
    interval = parse_schedule_expression(text).rate
    assert interval is not None
    after = start + offset
    times = runs(text, "UTC", after, 4, start_date=start)
    assert times[0] > after and times[0] - interval <= max(after, start - interval)
    assert all((t - start) % interval == timedelta(0) and t >= start for t in times)
    assert [b - a for a, b in itertools.pairwise(times)] == [interval] * 3


def test_given_at_in_berlin_when_next_runs_then_one_run_at_that_wall_time():
    assert runs("at(2027-06-01T10:00:00)", BERLIN, utc(2027, 1, 1), 5) == [utc(2027, 6, 1, 8)]


def test_given_at_in_the_past_when_next_runs_then_no_run():
    assert runs("at(2027-06-01T10:00:00)", BERLIN, utc(2027, 6, 1, 8)) == []


def test_given_at_with_start_and_end_dates_when_next_runs_then_like_aws_the_dates_are_ignored():
    times = runs(
        "at(2027-06-01T10:00:00)", "UTC", utc(2027, 1, 1), start_date=utc(2027, 7, 1), end_date=utc(2027, 8, 1)
    )
    assert times == [utc(2027, 6, 1, 10)]


def test_given_at_in_the_spring_gap_when_next_runs_then_it_runs_at_the_shifted_instant():
    # 02:30 Berlin does not exist on 2027-03-28; read with the winter offset it is 01:30 UTC = 03:30 CEST.
    assert runs("at(2027-03-28T02:30:00)", BERLIN, utc(2027, 1, 1)) == [utc(2027, 3, 28, 1, 30)]


def test_given_at_in_the_repeated_autumn_hour_when_next_runs_then_it_runs_at_the_first_occurrence():
    assert runs("at(2027-10-31T02:30:00)", BERLIN, utc(2027, 1, 1)) == [utc(2027, 10, 31, 0, 30)]


# ---------------------------------------------------------------------------------------------------------------------
# start_date / end_date and count


def test_given_start_and_end_dates_when_next_runs_then_both_are_inclusive_bounds():
    times = runs(
        "cron(0 3 * * ? *)", "UTC", utc(2027, 1, 1), 10, start_date=utc(2027, 1, 3, 3), end_date=utc(2027, 1, 5, 3)
    )
    assert times == [utc(2027, 1, 3, 3), utc(2027, 1, 4, 3), utc(2027, 1, 5, 3)]


def test_given_end_date_in_the_past_when_next_runs_then_nothing():
    assert runs("cron(0 3 * * ? *)", "UTC", utc(2027, 1, 1), end_date=utc(2026, 12, 31)) == []


def test_given_a_cron_whose_years_are_over_when_next_runs_then_nothing():
    assert runs("cron(0 3 * * ? 2026)", "UTC", utc(2027, 1, 1)) == []


def test_given_count_when_next_runs_then_at_most_count_items():
    assert len(runs("cron(* * * * ? *)", "UTC", utc(2027, 1, 1), 7)) == 7
    assert runs("cron(* * * * ? *)", "UTC", utc(2027, 1, 1), 0) == []


def test_given_end_date_before_start_date_when_next_runs_then_field_is_end_date():
    with pytest.raises(ScheduleExpressionError) as info:
        runs("rate(5 minutes)", "UTC", utc(2027, 1, 1), start_date=utc(2027, 2, 1), end_date=utc(2027, 1, 15))
    assert info.value.field == "end_date" and "before start_date" in info.value.rule


@pytest.mark.parametrize("field", ["start_date", "end_date"])
def test_given_naive_bound_when_next_runs_then_field_names_the_bound(field):
    with pytest.raises(ScheduleExpressionError) as info:
        runs("rate(5 minutes)", "UTC", utc(2027, 1, 1), **{field: datetime(2027, 1, 2)})
    assert info.value.field == field and "UTC offset" in info.value.rule


def test_given_times_outside_the_cron_years_when_next_runs_then_no_overflow_and_no_run_outside_1970_2199():
    assert runs("cron(0 3 * * ? *)", "Pacific/Kiritimati", datetime(9999, 12, 31, tzinfo=UTC)) == []
    assert runs("cron(0 3 * * ? *)", "Asia/Tokyo", datetime(1, 1, 1, tzinfo=UTC), 1) == [utc(1969, 12, 31, 18)]
    assert runs("cron(0 3 * * ? *)", "UTC", utc(2199, 12, 30), 5) == [utc(2199, 12, 30, 3), utc(2199, 12, 31, 3)]


def test_given_a_rate_too_long_to_repeat_before_year_9999_when_next_runs_then_only_the_first_run():
    assert runs("rate(999999999 days)", "UTC", utc(2027, 1, 1), start_date=utc(2027, 1, 2)) == [utc(2027, 1, 2)]


def test_given_naive_after_when_next_runs_then_value_error():
    with pytest.raises(ValueError, match="timezone-aware"):
        runs("rate(5 minutes)", "UTC", datetime(2027, 1, 1))


# ---------------------------------------------------------------------------------------------------------------------
# due_between


def test_given_a_window_when_due_between_then_exactly_the_times_in_start_exclusive_end_inclusive():
    expression = parse_schedule_expression("cron(0/5 * * * ? *)")
    assert due_between(expression, "UTC", utc(2027, 1, 1, 10), utc(2027, 1, 1, 10, 15)) == [
        utc(2027, 1, 1, 10, 5),
        utc(2027, 1, 1, 10, 10),
        utc(2027, 1, 1, 10, 15),
    ]


def test_given_an_empty_or_reversed_window_when_due_between_then_nothing():
    expression = parse_schedule_expression("cron(* * * * ? *)")
    assert due_between(expression, "UTC", utc(2027, 1, 1, 10), utc(2027, 1, 1, 10)) == []
    assert due_between(expression, "UTC", utc(2027, 1, 1, 11), utc(2027, 1, 1, 10)) == []


def test_given_a_ticker_each_second_when_due_between_then_every_run_fires_once_across_the_repeated_hour():
    # Ticking each second from 01:50 to 02:10 CEST and on through the repeated hour to 03:10 CET.
    expression = parse_schedule_expression("cron(0/10 * * * ? *)")
    start, stop = utc(2027, 10, 30, 23, 50), utc(2027, 10, 31, 2, 10)
    fired: list[datetime] = []
    tick = start
    while tick < stop:
        fired += due_between(expression, BERLIN, tick, tick + timedelta(seconds=1))
        tick += timedelta(seconds=1)
    assert fired == next_run_times(expression, BERLIN, start, 1000, None, stop)
    # 02:00-02:50 CEST run (00:00-00:50 UTC); the second 02:00-02:50 (CET, 01:00-01:50 UTC) does not.
    assert [t for t in fired if utc(2027, 10, 31, 0, 55) < t < utc(2027, 10, 31, 2)] == []
    assert fired[-2:] == [utc(2027, 10, 31, 2), utc(2027, 10, 31, 2, 10)]


def test_given_rate_with_start_date_when_due_between_then_only_the_anchored_runs_in_the_window():
    expression = parse_schedule_expression("rate(1 minute)")
    created = utc(2027, 1, 1, 10, 0, 20)
    assert due_between(expression, "UTC", utc(2027, 1, 1, 10, 3), utc(2027, 1, 1, 10, 3, 30), start_date=created) == [
        utc(2027, 1, 1, 10, 3, 20)
    ]
    assert due_between(
        expression, "UTC", utc(2027, 1, 1, 10, 0, 19), utc(2027, 1, 1, 10, 0, 20), start_date=created
    ) == [created]


def test_given_at_when_due_between_then_it_fires_in_the_one_window_that_holds_it():
    expression = parse_schedule_expression("at(2027-06-01T10:00:00)")
    assert due_between(expression, BERLIN, utc(2027, 6, 1, 7, 59, 59), utc(2027, 6, 1, 8)) == [utc(2027, 6, 1, 8)]
    assert due_between(expression, BERLIN, utc(2027, 6, 1, 8), utc(2027, 6, 1, 8, 0, 1)) == []


def test_given_end_date_when_due_between_then_runs_after_it_are_not_due():
    expression = parse_schedule_expression("cron(0 * * * ? *)")
    assert due_between(expression, "UTC", utc(2027, 1, 1), utc(2027, 1, 2), end_date=utc(2027, 1, 1, 2, 30)) == [
        utc(2027, 1, 1, 1),
        utc(2027, 1, 1, 2),
    ]


@settings(max_examples=100, deadline=None)
@given(
    text=st.sampled_from(["cron(0/7 * * * ? *)", "cron(30 2 * * ? *)", "cron(0 9 ? * MON-FRI *)", "rate(13 minutes)"]),
    zone=st.sampled_from(ZONES),
    a=st.datetimes(datetime(2027, 3, 1), datetime(2027, 11, 30), timezones=st.just(UTC)),
    gaps=st.tuples(st.timedeltas(timedelta(0), timedelta(hours=12)), st.timedeltas(timedelta(0), timedelta(hours=12))),
)
def test_given_adjacent_windows_when_due_between_then_they_add_up_to_the_whole_window_and_to_next_run_times(
    text, zone, a, gaps
):
    expression = parse_schedule_expression(text)
    start_date = utc(2027, 2, 1, 0, 0, 11)  # anchors the rate; harmless for cron
    b, c = a + gaps[0], a + gaps[0] + gaps[1]
    whole = due_between(expression, zone, a, c, start_date)
    assert whole == due_between(expression, zone, a, b, start_date) + due_between(expression, zone, b, c, start_date)
    assert all(a < t <= c for t in whole)
    assert whole == [t for t in next_run_times(expression, zone, a, 1000, start_date) if t <= c]


# ---------------------------------------------------------------------------------------------------------------------
# aws-croniter 2.1.1 defects this module works around (if one of these starts failing, the library was fixed)


def test_given_aws_croniter_when_L_is_alone_in_day_of_week_then_it_never_matches():
    assert AwsCroniter("0 10 ? * L *").get_next(utc(2027, 1, 1)) == [None]
    assert runs("cron(0 10 ? * L *)", "UTC", utc(2027, 1, 1), 1) == [utc(2027, 1, 2, 10)]


@pytest.mark.parametrize("fields", ["0 0 LW * ? *", "*-5 0 * * ? *", "5-* 0 * * ? *", "0/0 0 * * ? *"])
def test_given_aws_croniter_when_syntax_passes_its_validation_then_its_parser_crashes(fields):
    with pytest.raises(ValueError) as info:
        AwsCroniter(fields)
    assert type(info.value) is ValueError  # not its AwsCroniterExpressionError
    assert rejection(f"cron({fields})").rule


def test_given_aws_croniter_when_the_next_run_is_years_away_then_it_gives_up_after_ten_steps():
    assert AwsCroniter("0 0 29 2 ? 2097-2199").get_next(utc(2097, 1, 1)) == [None]
    assert runs("cron(0 0 29 2 ? 2097-2199)", "UTC", utc(2097, 1, 1), 2) == [utc(2104, 2, 29), utc(2108, 2, 29)]
    # the fifth Sunday of February happens in 2032, 2060 and 2088 (February 1st a Sunday in a leap year)
    assert AwsCroniter("0 0 ? 2 1#5 *").get_next(utc(2033, 1, 1)) == [None]
    assert runs("cron(0 0 ? 2 1#5 *)", "UTC", utc(2027, 1, 1), 3) == [
        utc(2032, 2, 29),
        utc(2060, 2, 29),
        utc(2088, 2, 29),
    ]


def test_given_aws_croniter_when_a_start_is_within_half_a_millisecond_of_a_minute_then_it_skips_that_minute():
    after = utc(2027, 1, 1, 10, 0, 59, 999600)
    assert AwsCroniter("* * * * ? *").get_next(after) == [utc(2027, 1, 1, 10, 2)]
    assert runs("cron(* * * * ? *)", "UTC", after, 1) == [utc(2027, 1, 1, 10, 1)]


def test_given_aws_croniter_when_given_a_non_utc_datetime_then_it_refuses_it():
    with pytest.raises(Exception, match=r"timezone\.utc"):
        AwsCroniter("0 3 * * ? *").get_next(datetime(2027, 1, 1, tzinfo=ZoneInfo(BERLIN)))
