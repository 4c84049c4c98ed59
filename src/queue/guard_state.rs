//! State shared by every worker process through Redis, beyond delivery: a
//! pacing gate (rate limits) and circuit-breaker state. The policy (which
//! limits, when to open) lives in [`crate::llm::guard`]; this module only
//! makes the operations atomic across processes.
//!
//! Everything here is advisory: if Redis is unreachable the callers fail
//! open (send the request), because a rate limiter must not become the
//! outage it protects against.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;
use redis::aio::ConnectionManager;

use super::QueueError;

/// Generic cell rate algorithm with reservation: every caller gets the next
/// slot and is told how long to wait for it, so requests from all processes
/// come out evenly spaced instead of in bursts that trip the provider.
///
/// KEYS[1]: theoretical arrival time (µs); KEYS[2]: rate factor (AIMD).
/// ARGV[1]: µs per unit at factor 1; ARGV[2]: units; ARGV[3]: burst (µs).
/// Returns {wait_µs, factor × 1000}.
static RESERVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        local t = redis.call('TIME')
        local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
        local factor = tonumber(redis.call('GET', KEYS[2]) or '1')
        local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
        if tat < now then tat = now end
        local new_tat = tat + (tonumber(ARGV[1]) / factor) * tonumber(ARGV[2])
        local wait = new_tat - now - tonumber(ARGV[3])
        if wait < 0 then wait = 0 end
        redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.floor((new_tat - now) / 1000) + 60000)
        return {math.floor(wait), math.floor(factor * 1000)}
        ",
    )
});

/// Multiplies the rate factor by ARGV[1] and adds ARGV[2], clamped to
/// [ARGV[3], 1]; kept for ARGV[4] seconds. Returns factor × 1000.
static ADJUST: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        local factor = tonumber(redis.call('GET', KEYS[1]) or '1')
        factor = factor * tonumber(ARGV[1]) + tonumber(ARGV[2])
        if factor < tonumber(ARGV[3]) then factor = tonumber(ARGV[3]) end
        if factor >= 1 then
            redis.call('DEL', KEYS[1])
            return 1000
        end
        redis.call('SET', KEYS[1], tostring(factor), 'EX', tonumber(ARGV[4]))
        return math.floor(factor * 1000)
        ",
    )
});

/// Breaker check. KEYS: open_until (ms), cooldown (ms), probe.
/// ARGV[1]: probe ttl (ms). Returns ms to wait (0: go ahead).
static BREAKER_CHECK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        local t = redis.call('TIME')
        local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
        local open_until = tonumber(redis.call('GET', KEYS[1]) or '0')
        if open_until > now then return open_until - now end
        if redis.call('EXISTS', KEYS[2]) == 1 then
            -- Recently open: half-open, one probe at a time.
            if redis.call('SET', KEYS[3], '1', 'NX', 'PX', tonumber(ARGV[1])) then return 0 end
            return tonumber(redis.call('PTTL', KEYS[3]))
        end
        return 0
        ",
    )
});

/// Breaker failure. KEYS: failures, open_until, cooldown, probe.
/// ARGV: threshold, base cooldown ms, max cooldown ms.
/// Returns the ms the breaker is now open for (0: still closed).
static BREAKER_FAIL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        local failures = redis.call('INCR', KEYS[1])
        redis.call('PEXPIRE', KEYS[1], 600000)
        redis.call('DEL', KEYS[4])
        if failures < tonumber(ARGV[1]) then return 0 end
        local t = redis.call('TIME')
        local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
        local cooldown = tonumber(redis.call('GET', KEYS[3]) or '0') * 2
        if cooldown < tonumber(ARGV[2]) then cooldown = tonumber(ARGV[2]) end
        if cooldown > tonumber(ARGV[3]) then cooldown = tonumber(ARGV[3]) end
        redis.call('SET', KEYS[2], now + cooldown, 'PX', cooldown)
        redis.call('SET', KEYS[3], cooldown, 'PX', cooldown * 4)
        redis.call('SET', KEYS[1], 0, 'PX', 600000)
        return cooldown
        ",
    )
});

/// Takes one of ARGV[1] places in the in-flight set KEYS[1] (a sorted set
/// of holders scored by when their hold lapses, so a holder that died
/// frees its place after ARGV[3] ms). ARGV[2]: the holder's id.
/// Returns 1 when taken, 0 when every place is held.
static IN_FLIGHT_TAKE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        local t = redis.call('TIME')
        local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
        redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
        if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
        redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
        redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]) + 60000)
        return 1
        ",
    )
});

/// A handle on the shared state of one deployment (one queue namespace).
#[derive(Clone)]
pub struct GuardState {
    conn: ConnectionManager,
    prefix: String,
}

impl std::fmt::Debug for GuardState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardState")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// A reserved slot: wait this long, then send.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reservation {
    pub wait: Duration,
    /// The current rate factor (1.0 = the configured rate).
    pub factor: f64,
}

impl GuardState {
    pub async fn connect(redis_url: &str, queue: &str) -> Result<GuardState, QueueError> {
        let client = redis::Client::open(redis_url)?;
        let conn = client.get_connection_manager().await?;
        Ok(GuardState {
            conn,
            prefix: format!("{queue}:kiln"),
        })
    }

    fn key(&self, parts: &[&str]) -> String {
        format!("{}:{}", self.prefix, parts.join(":"))
    }

    /// Reserves `units` on the limit `name` of `per_minute` units a minute,
    /// allowing a burst of `burst` units.
    pub async fn reserve(
        &self,
        name: &str,
        units: u64,
        per_minute: f64,
        burst: f64,
    ) -> Result<Reservation, QueueError> {
        let per_unit_us = 60_000_000.0 / per_minute;
        let mut conn = self.conn.clone();
        let (wait_us, factor): (i64, i64) = RESERVE
            .key(self.key(&["gate", name, "tat"]))
            .key(self.key(&["gate", name, "factor"]))
            .arg(per_unit_us)
            .arg(units)
            .arg(per_unit_us * burst)
            .invoke_async(&mut conn)
            .await?;
        Ok(Reservation {
            wait: Duration::from_micros(wait_us.max(0) as u64),
            factor: factor as f64 / 1000.0,
        })
    }

    /// Scales the rate of `name`: `factor × multiply + add`, within
    /// [`floor`, 1], remembered for `ttl`. Returns the new factor.
    pub async fn adjust_rate(
        &self,
        name: &str,
        multiply: f64,
        add: f64,
        floor: f64,
        ttl: Duration,
    ) -> Result<f64, QueueError> {
        let mut conn = self.conn.clone();
        let factor: i64 = ADJUST
            .key(self.key(&["gate", name, "factor"]))
            .arg(multiply)
            .arg(add)
            .arg(floor)
            .arg(ttl.as_secs().max(1))
            .invoke_async(&mut conn)
            .await?;
        Ok(factor as f64 / 1000.0)
    }

    /// How long the breaker `name` keeps callers waiting (zero: go ahead).
    pub async fn breaker_wait(&self, name: &str, probe_ttl: Duration) -> Result<Duration, QueueError> {
        let mut conn = self.conn.clone();
        let ms: i64 = BREAKER_CHECK
            .key(self.key(&["breaker", name, "open_until"]))
            .key(self.key(&["breaker", name, "cooldown"]))
            .key(self.key(&["breaker", name, "probe"]))
            .arg(probe_ttl.as_millis() as u64)
            .invoke_async(&mut conn)
            .await?;
        Ok(Duration::from_millis(ms.max(0) as u64))
    }

    /// Counts a failure; opens the breaker at `threshold` consecutive ones.
    /// Returns how long it is now open (zero: still closed).
    pub async fn breaker_failure(
        &self,
        name: &str,
        threshold: u32,
        cooldown: Duration,
        max: Duration,
    ) -> Result<Duration, QueueError> {
        let mut conn = self.conn.clone();
        let ms: i64 = BREAKER_FAIL
            .key(self.key(&["breaker", name, "failures"]))
            .key(self.key(&["breaker", name, "open_until"]))
            .key(self.key(&["breaker", name, "cooldown"]))
            .key(self.key(&["breaker", name, "probe"]))
            .arg(threshold)
            .arg(cooldown.as_millis() as u64)
            .arg(max.as_millis() as u64)
            .invoke_async(&mut conn)
            .await?;
        Ok(Duration::from_millis(ms.max(0) as u64))
    }

    /// Answers when Redis does: the pre-flight check's probe.
    pub async fn ping(&self) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        redis::cmd("PING").query_async::<String>(&mut conn).await?;
        Ok(())
    }

    /// Tries to take one of `cap` places of the in-flight set `name` for
    /// `holder`, held at most `hold` (then it lapses by itself, so a worker
    /// that died holding one blocks nobody for longer). True when taken.
    pub async fn take_in_flight(&self, name: &str, cap: u32, holder: &str, hold: Duration) -> Result<bool, QueueError> {
        let mut conn = self.conn.clone();
        let taken: i64 = IN_FLIGHT_TAKE
            .key(self.key(&["in_flight", name]))
            .arg(cap)
            .arg(holder)
            .arg(hold.as_millis() as u64)
            .invoke_async(&mut conn)
            .await?;
        Ok(taken == 1)
    }

    /// Gives back `holder`'s place in the in-flight set `name`.
    pub async fn release_in_flight(&self, name: &str, holder: &str) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        redis::cmd("ZREM")
            .arg(self.key(&["in_flight", name]))
            .arg(holder)
            .query_async::<i64>(&mut conn)
            .await?;
        Ok(())
    }

    /// How many places of the in-flight set `name` are held now.
    pub async fn in_flight(&self, name: &str) -> Result<u64, QueueError> {
        let mut conn = self.conn.clone();
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let held: u64 = redis::cmd("ZCOUNT")
            .arg(self.key(&["in_flight", name]))
            .arg(now_ms as u64)
            .arg("+inf")
            .query_async(&mut conn)
            .await?;
        Ok(held)
    }

    /// A success closes the breaker and forgets its history.
    pub async fn breaker_success(&self, name: &str) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        redis::cmd("DEL")
            .arg(self.key(&["breaker", name, "failures"]))
            .arg(self.key(&["breaker", name, "open_until"]))
            .arg(self.key(&["breaker", name, "cooldown"]))
            .arg(self.key(&["breaker", name, "probe"]))
            .query_async::<i64>(&mut conn)
            .await?;
        Ok(())
    }
}
