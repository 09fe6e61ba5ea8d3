//! What the page's charts draw: deliveries, failures and backlog over the last hour and
//! the last day, kept in memory by the admin listener. Two fixed-size rings of time slots
//! (an hour of minutes, a day of ten-minute slots), so memory stays the same however long
//! the daemon runs. Samples are the differences of this process's counters between two
//! readings, and the backlog read from the store statistics.

/// A fixed-capacity ring: pushing onto a full ring overwrites the oldest entry.
#[derive(Debug, Clone)]
pub struct Ring<T> {
    buf: Vec<T>,
    /// Where the next push goes once the ring is full (the oldest entry).
    head: usize,
    cap: usize,
}

impl<T> Ring<T> {
    pub fn new(cap: usize) -> Ring<T> {
        assert!(cap > 0, "a ring holds at least one entry");
        Ring {
            buf: Vec::with_capacity(cap),
            head: 0,
            cap,
        }
    }

    pub fn push(&mut self, v: T) {
        if self.buf.len() < self.cap {
            self.buf.push(v);
        } else {
            self.buf[self.head] = v;
            self.head = (self.head + 1) % self.cap;
        }
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.buf[self.head..].iter().chain(&self.buf[..self.head])
    }

    /// The newest entry.
    pub fn last_mut(&mut self) -> Option<&mut T> {
        if self.buf.is_empty() {
            return None;
        }
        let i = (self.head + self.buf.len() - 1) % self.buf.len();
        self.buf.get_mut(i)
    }
}

/// One time slot of a series.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Slot {
    /// The slot's number: its start (epoch ms) divided by the slot length.
    pub index: i64,
    pub delivered: u64,
    pub failed: u64,
    /// The latest backlog read in this slot (`None` when the store did not answer).
    pub backlog: Option<i64>,
}

/// Slots of `slot_ms` each, the last `cap` of them.
#[derive(Debug, Clone)]
pub struct Series {
    pub slot_ms: i64,
    slots: Ring<Slot>,
}

impl Series {
    pub fn new(slot_ms: i64, cap: usize) -> Series {
        Series {
            slot_ms,
            slots: Ring::new(cap),
        }
    }

    pub fn capacity(&self) -> usize {
        self.slots.capacity()
    }

    /// Adds counts and a backlog reading taken at `now` (epoch ms).
    pub fn add(&mut self, now: i64, delivered: u64, failed: u64, backlog: Option<i64>) {
        let index = now.div_euclid(self.slot_ms);
        match self.slots.last_mut() {
            // The same slot, or a clock that stepped back: into the newest slot.
            Some(last) if last.index >= index => {
                last.delivered += delivered;
                last.failed += failed;
                if backlog.is_some() {
                    last.backlog = backlog;
                }
            }
            _ => self.slots.push(Slot {
                index,
                delivered,
                failed,
                backlog,
            }),
        }
    }

    /// The last `capacity` slots up to the one holding `now`, oldest first; slots without
    /// a sample (the daemon was not running, or nothing was read) are `None`.
    pub fn window(&self, now: i64) -> Vec<Option<Slot>> {
        let last = now.div_euclid(self.slot_ms);
        let first = last - self.slots.capacity() as i64 + 1;
        let mut out = vec![None; self.slots.capacity()];
        for s in self.slots.iter() {
            if (first..=last).contains(&s.index) {
                out[(s.index - first) as usize] = Some(*s);
            }
        }
        out
    }
}

/// Minutes of the last hour.
pub const HOUR_SLOT_MS: i64 = 60_000;
/// Ten-minute slots of the last day.
pub const DAY_SLOT_MS: i64 = 600_000;

/// The page's history: the last hour and the last day, and the counter totals last read.
#[derive(Debug, Clone)]
pub struct History {
    pub hour: Series,
    pub day: Series,
    /// The totals at the previous reading: the counters start at zero with the process.
    last: (u64, u64),
}

impl Default for History {
    fn default() -> Self {
        History {
            hour: Series::new(HOUR_SLOT_MS, 60),
            day: Series::new(DAY_SLOT_MS, 144),
            last: (0, 0),
        }
    }
}

impl History {
    /// Records a reading at `now`: the process's delivered and failed totals since it
    /// started (counted from the previous reading on) and the backlog.
    pub fn sample(
        &mut self,
        now: i64,
        delivered_total: u64,
        failed_total: u64,
        backlog: Option<i64>,
    ) {
        // Two readings (the sampler and a page view) may reach here out of order: an older
        // reading counts nothing and never moves the baseline back, so nothing counts twice.
        let (d0, f0) = self.last;
        let delivered = delivered_total.saturating_sub(d0);
        let failed = failed_total.saturating_sub(f0);
        self.last = (d0.max(delivered_total), f0.max(failed_total));
        self.hour.add(now, delivered, failed, backlog);
        self.day.add(now, delivered, failed, backlog);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_ring_overwrites_its_oldest_entries() {
        let mut r = Ring::new(3);
        assert!(r.is_empty());
        for i in 1..=2 {
            r.push(i);
        }
        assert_eq!(r.iter().copied().collect::<Vec<_>>(), [1, 2]);
        for i in 3..=7 {
            r.push(i);
        }
        assert_eq!(r.len(), 3);
        assert_eq!(r.iter().copied().collect::<Vec<_>>(), [5, 6, 7]);
        *r.last_mut().unwrap() = 70;
        assert_eq!(r.iter().copied().collect::<Vec<_>>(), [5, 6, 70]);
    }

    #[test]
    fn a_series_keeps_only_its_window_however_long_it_runs() {
        let mut s = Series::new(1_000, 4);
        for t in 0..10_000 {
            // One reading every 100 ms: ten per slot.
            s.add(t * 100, 1, 0, Some(t));
        }
        assert_eq!(s.slots.len(), 4, "bounded");
        let now = 9_999 * 100;
        let w = s.window(now);
        assert_eq!(w.len(), 4);
        let w: Vec<Slot> = w
            .into_iter()
            .map(|s| s.expect("every slot sampled"))
            .collect();
        assert_eq!(
            w.iter().map(|s| s.index).collect::<Vec<_>>(),
            [996, 997, 998, 999]
        );
        assert!(w.iter().all(|s| s.delivered == 10));
        assert_eq!(w[3].backlog, Some(9_999), "the latest reading of the slot");
    }

    #[test]
    fn gaps_and_old_slots_fall_out_of_the_window() {
        let mut s = Series::new(1_000, 3);
        s.add(0, 1, 0, Some(1));
        s.add(5_000, 2, 1, None);
        let w = s.window(6_500);
        assert_eq!(w[0], None);
        assert_eq!(w[1].unwrap().delivered, 2);
        assert_eq!(w[1].unwrap().backlog, None);
        assert_eq!(w[2], None);
        // A clock step back lands in the newest slot.
        s.add(4_000, 1, 0, Some(3));
        assert_eq!(s.window(5_000)[2].unwrap().delivered, 3);
    }

    #[test]
    fn history_counts_differences_between_readings() {
        let mut h = History::default();
        h.sample(0, 100, 7, Some(5));
        h.sample(1_000, 103, 8, Some(4));
        h.sample(61_000, 110, 8, Some(0));
        let w = h.hour.window(61_000);
        let last = w[59].unwrap();
        let before = w[58].unwrap();
        assert_eq!(
            (before.delivered, before.failed, before.backlog),
            (103, 8, Some(4))
        );
        assert_eq!((last.delivered, last.failed, last.backlog), (7, 0, Some(0)));
        let d = h.day.window(61_000);
        assert_eq!(d[143].unwrap().delivered, 110);
    }

    #[test]
    fn a_stale_reading_never_counts_twice() {
        let mut h = History::default();
        h.sample(0, 12, 3, None);
        // Read before the one above, recorded after it.
        h.sample(0, 10, 2, None);
        h.sample(0, 14, 3, None);
        let w = h.hour.window(0);
        assert_eq!((w[59].unwrap().delivered, w[59].unwrap().failed), (14, 3));
    }
}
