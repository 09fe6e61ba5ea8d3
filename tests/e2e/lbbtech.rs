//! charge_start → lbbtech start, poll and verify, through the real daemon.
