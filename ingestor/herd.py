"""A live simulated farm for demos, tests and benchmarks: the messages its devices publish (contract
section 4), with labelled health and device events, the confounders a real farm has, and their
ground truth.

The farm is written from the dairy-science literature, not from the alert rules: nothing here reads a
detector's threshold. Per tick every collar reports activity, rumination, eating, lying (resting) and
body temperature; every barn zone reports its climate; cows are milked in a parlour at fixed hours, by
milking robots whenever each chooses, or both (by pen); devices report their status hourly.

The farm (`HerdState`)
- Cows: parity 1/2/3+ in 35/28/37 % (a typical Holstein herd's age structure); days in milk spread
  over the lactation (a herd calving all year); a few calve during the run and are dry until then.
  Pens of at most 70 cows ("Pen 1", ...), each in a barn zone; in a mixed farm half the pens go to the
  robots.
- Milk: Wood's lactation curve y = a t^b e^(-ct) (Wood 1967, Nature 216:164) with parameters giving a
  peak of ~30 kg at ~75 days in first lactation and ~39 kg at ~50 days later (Holstein-like), a cow's
  own level (sd 12 %) and a day-to-day wobble. Milk is secreted continuously and a milking takes what
  has accumulated since the cow's last one, so yield per session is her rate x the interval (robots:
  2-4 milkings a day at intervals of 6-16 h, each cow her own frequency, fetched at 16 h; lame cows
  visit less, Bach et al. 2007 J Dairy Res 74:40; a few % of milkings are incomplete, the next one
  bigger); 3x parlour milking gives ~10 % more milk (Erdman & Varner 1995, J Dairy Sci 78:1199).
  Conductivity 4-6 mS/cm per cow (Norberg et al. 2004, J Dairy Sci 87:1099). The contract's milking
  payload has no somatic cell count field, so SCC is not sent: mastitis shows in conductivity, yield
  and blood.
- Behaviour: each cow has her own level and amplitude of a diurnal rhythm: lying ~11.5 h/day, most of
  it at night (Ito et al. 2009, J Dairy Sci 92:4412), rumination ~500 min/day (sd 50 between cows),
  more at night and an hour or two after fresh feed, eating ~4.5 h/day peaking after feed delivery
  (DeVries et al. 2003, J Dairy Sci 86:4079), activity peaking at feed delivery, push-ups and (in a
  parlour) the walk to and from milking; robots spread all of that over the day. Collars report
  rumination, eating and resting as the minutes of the last 2 hours as a daily rate (x12), as neck tags
  report 2-hour blocks (Schirmann et al. 2009, J Dairy Sci 92:6052). Body temperature ~38.6 degC with a
  circadian swing of 0.3-0.5 degC peak to peak, highest in the late afternoon, as the issue asks (core
  temperature studies find 0.5-1.4 degC with other shapes: Bitman et al. 1984, J Dairy Sci 67:1014;
  Piccione et al. 2003, BMC Physiol 3:7; a collar at the neck sees less).
- Climate: a summer barn, each day's maximum drawn around a per-run level of 19-24 degC with
  day-to-day persistence, coolest at 05:00 and warmest at 15:00, humidity lowest in the afternoon. THI
  from NRC (1971): (1.8 T + 32) - (0.55 - 0.0055 RH)(1.8 T - 26); cows are heat stressed above 72
  (Armstrong 1994, J Dairy Sci 77:2044) and respond from ~68 (Zimbelman et al. 2009, Proc Southwest
  Nutr Conf).

Ground truth (`EVENT_KINDS`, scored), rates per cow-year unless said
- oestrus: every open cycling cow every 18-24 days (21 +- 1.5); first ovulation at ~33 days in milk
  (Loevendahl & Chagunda 2010, J Dairy Sci 93:249), half of first ovulations silent (no event); 15 % of
  open cows anoestrous; pregnant cows (a 20 % 21-day pregnancy rate after a 50-day waiting period) and
  cows early in lactation do not cycle; a heat after 50 days conceives with p 0.3. Activity 2-4x
  baseline (Kiddy 1977, J Dairy Sci 60:235: 2.75-4x; Roelofs et al. 2005, Theriogenology 64:1690),
  but ~25 % are weak heats of 1.3-1.6x, more in high yielders (Lopez et al. 2004, Anim Reprod Sci
  81:209: shorter and weaker oestrus above 39.5 kg/day) and lame cows (Dobson et al. 2008, Animal
  2:1104: intensity halved); 6-24 h (12 +- 4; Silper et al. 2015, J Dairy Sci 98:3158: ~14 h),
  starting at any hour; rumination -17 % (Reith & Hoy 2012, J Dairy Sci 95:6416), less lying, body
  temperature +0.3 degC (assumed). Event intensity: the
  activity multiple. Field detection rates of such systems: Kamphuis et al. 2012 (J Dairy Sci 95:3045).
- mastitis (clinical): 30 per 100 cow-years (Olde Riekerink et al. 2008, J Dairy Sci 91:1366: 23),
  3x in the first 30 days; 2-5 days; conductivity up 12-50 % from ~12 h before the signs and for days
  after (Norberg et al. 2004), yield down 10-30 % (Rajala-Schultz et al. 1999, J Dairy Sci 82:1213),
  blood in some milkings; 10 % severe with a fever (a fever event of its own), 30 % moderate with
  rumination down (Oliveira et al. 2013, J Dairy Sci 96:7538). Intensity: the conductivity multiple.
- subclinical_mastitis: 80 new cases per 100 cow-years, 30-120 days; 15 % of cows infected at the
  start (prevalence of SCC > 200,000 in many herds); conductivity up 4-12 %, yield down 1-5 % (Hortet &
  Seegers 1998, Prev Vet Med 37:1).
- fever: 39.7-41 degC for 1-3 days (fever > 39.5, seed 000 section 3.1): metritis in 15 % of fresh cows
  at 3-10 days in milk (LeBlanc 2008, Vet J 176:102), other causes 8 per 100 cow-years; rumination
  and activity down. The event is the febrile period; the rise begins 3 h before it.
- rumination_drop (digestive): 15 per 100 cow-years, and ketosis or a displaced abomasum in 8 % of
  fresh cows at 3-21 days (LeBlanc 2010, J Reprod Dev 56:S29); rumination down 25-60 % for 1-4 days
  (Stangaferro et al. 2016, J Dairy Sci 99:7395), activity and yield down.
- yield_drop: a fall of 12-30 % for 1-3 days with no other sign (feed or water access, a stressful
  event): 10 per 100 cow-years (assumed).
- lameness: 40 new cases per 100 cow-years (Green et al. 2002, J Dairy Sci 85:2250), 8 % of cows lame
  at the start; develops over 3 days, lasts 1-3 weeks: activity down 15-40 %, lying up 10-25 % (Ito
  et al. 2010, J Dairy Sci 93:3553), yield down 5-15 %, later in the parlour order, fewer robot visits.
- heat_stress: a zone whose THI is 72 or more for an hour or longer (the label follows the simulated
  climate, so hot afternoons count as well as heat waves).
- device_failure: a collar silent for 2-48 h (median 6), 6 per collar-year (assumed; radio and battery).
- stuck_sensor: a climate sensor repeating exactly the same readings for 12-24 h, 6 per sensor-year
  (assumed; the "stuck-at" fault of Ni et al. 2009, ACM TOSN 5:25).

Context (`CONTEXT_KINDS`: recorded, never scored as truths)
- heat_wave: 1 per 30 days (a temperate summer), 2-3 days of +6-10 degC (THI well over 72): cows'
  rumination -10-20 % (Soriani et al. 2013, J Dairy Sci 96:5082), body temperature +0.3-0.8 degC,
  less lying and daytime activity (Allen et al. 2015, J Dairy Sci 98:118), yield -5-10 % with a lag of
  1-2 days (West 2003, J Dairy Sci 86:2131).
- feed_change: a new ration every ~14 days, for the herd or a pen: rumination -15-25 % for 1-3 days,
  yield wobbles (assumed from the transition response in Beauchemin 2018, J Dairy Sci 101:4762).
- regrouping: weekly, 3-10 % of a pen's cows moved in: activity +20-60 % for 12-36 h, rumination and
  lying down (von Keyserlingk et al. 2008, J Dairy Sci 91:1011; Schirmann et al. 2011, J Dairy Sci
  94:2312).
- breakdown: the parlour or a robot down 2-6 h, ~1 per unit per 30 days: milkings wait, the next is
  bigger.
- fresh_cow: calving (during the run, or fewer than 10 days in milk at the start): rumination down
  ~30 % the day before and slowly back over 10 days (Schirmann et al. 2013, J Dairy Sci 96:7088),
  restlessness before calving, slightly warmer, colostrum's conductivity, blood in the first milkings of
  15 % of fresh cows (assumed), yield climbing.

Transport faults (with `faults`): a fifth of the collars and climate sensors deliver 2-6 % of their
messages 1-6 hours late (store and forward); 1 % of collar and climate messages arrive twice (MQTT QoS 1
redelivery); 4 % of collars' clocks are 1-10 minutes off. With `fahrenheit`, that many collars report
body temperature in degF: the contract's collar payload has no unit field, so their temperature goes as a
reading batch with metric_unit degF to SENSOR_BATCH (the HTTP batch endpoint), the rest over MQTT.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta

import msgspec
import numpy as np

EVENT_KINDS = ("oestrus", "fever", "mastitis", "subclinical_mastitis", "heat_stress", "rumination_drop", "yield_drop",
               "lameness", "device_failure", "stuck_sensor")
CONTEXT_KINDS = ("heat_wave", "feed_change", "regrouping", "breakdown", "fresh_cow")
ZONE_KINDS = frozenset({"heat_stress", "stuck_sensor"})
SHAPES = ("parlour", "robots", "mixed")
MILKING_HOURS = {2: (5.0, 16.0), 3: (5.0, 13.0, 21.0)}
PARLOUR_ID, ROBOT_PARLOUR_ID = 1, 2  # the parlour's and the robots' parlor_id in milking topics
SENSOR_BATCH = "/api/v1/ingest/sensor/batch"  # not an MQTT topic: a reading batch for the HTTP endpoint
WEAK_HEAT = 1.6  # an oestrus whose activity multiple is below this is a weak heat
COLLAR_WINDOW_H = 2.0  # rumination, eating and resting: the last 2 hours as a daily rate
HOUR, DAY = 3600.0, 86_400.0
PEN_SIZE = 70
COWS_PER_ROBOT = 60
PARLOUR_COWS_PER_HOUR = 80.0

# Rates (per cow-year, or per farm-day where said) and shapes; sources in the module docstring.
RATES = {"mastitis": 0.30, "subclinical_mastitis": 0.80, "fever": 0.08, "rumination_drop": 0.15,
         "yield_drop": 0.10, "lameness": 0.40, "device_failure": 6.0, "stuck_sensor": 6.0}
HEAT_WAVES_PER_DAY, FEED_CHANGES_PER_DAY, REGROUPINGS_PER_DAY, BREAKDOWNS_PER_UNIT_DAY = 1 / 30, 1 / 14, 1 / 7, 1 / 30
FRESH_DAYS = 10.0
THI_STRESS = 72.0
# Hours of an event's effect ramp before its start, of its development after the start, after its end.
RAMPS_H = {"oestrus": (1.5, 0, 1.5), "fever": (3, 0, 6), "mastitis": (12, 0, 72), "subclinical_mastitis": (0, 24, 48),
           "rumination_drop": (6, 0, 12), "yield_drop": (6, 0, 12), "lameness": (0, 72, 48), "feed_change": (0, 6, 12),
           "regrouping": (0, 0, 6), "device_failure": (0, 0, 0)}


@dataclass(frozen=True)
class Event:
    kind: str
    start: datetime
    end: datetime
    cow: int | None = None  # index in the herd
    zone: int | None = None
    pen: int | None = None  # pen-wide context (None with no cow: the whole herd)
    intensity: float | None = None  # oestrus: activity multiple; fever: degC; mastitis: conductivity multiple ...
    robot: int | None = None  # breakdown of this robot (None: the parlour)

    def active(self, t: datetime) -> bool:
        return self.start <= t < self.end

    def as_json(self, farm_id: int) -> dict:
        d = {k: v for k, v in asdict(self).items() if v is not None}
        d["farm_id"] = farm_id
        if self.cow is not None:
            d["animal_code"] = cow_code(self.cow)
            d["device_uid"] = collar_uid(farm_id, self.cow)
        elif self.kind == "stuck_sensor":
            d["device_uid"] = zone_uid(farm_id, self.zone)
        return d


class Plan(list):
    """The events that begin in a run's window (a list of Event, oldest first), with the truth events
    already under way at its start (`ongoing`), the confounders (`context`) and the weather."""

    def __init__(self, events: Sequence[Event], ongoing: Sequence[Event] = (), context: Sequence[Event] = (),
                 weather: Weather | None = None) -> None:
        super().__init__(events)
        self.ongoing = list(ongoing)
        self.context = list(context)
        self.weather = weather

    @property
    def truth(self) -> list[Event]:
        """Every scored-kind event (begun in the window or before it)."""
        return [*self.ongoing, *self]

    def everything(self) -> list[Event]:
        return sorted([*self.ongoing, *self, *self.context], key=lambda e: e.start)


def cow_code(cow: int) -> str:
    return f"COW-{cow + 1:05d}"


def collar_uid(farm_id: int, cow: int) -> str:
    return f"COL-F{farm_id:02d}-{cow:05d}"


def zone_uid(farm_id: int, zone: int) -> str:
    return f"ENV-F{farm_id:02d}-Z{zone + 1:02d}"


def animal_id(farm_id: int, cow: int) -> int:
    return farm_id * 100_000 + cow + 1


def zone_id(farm_id: int, zone: int) -> int:
    return farm_id * 100 + zone + 1


def robot_uid(farm_id: int, robot: int) -> str:
    return f"AMS-F{farm_id:02d}-R{robot + 1:02d}"


def thi(temp_c: np.ndarray | float, rh: np.ndarray | float) -> np.ndarray | float:
    """Temperature-humidity index (NRC 1971)."""
    return (1.8 * temp_c + 32) - (0.55 - 0.0055 * rh) * (1.8 * temp_c - 26)


def wood_yield(days_in_milk: np.ndarray, parity: np.ndarray | int = 2) -> np.ndarray:
    """Daily yield (kg) on Wood's lactation curve, first lactation flatter and lower."""
    t = np.maximum(days_in_milk, 1.0)
    first = np.asarray(parity) == 1
    a, b, c = np.where(first, 15.5, 20.5), np.where(first, 0.20, 0.22), np.where(first, 0.0027, 0.0042)
    return a * t ** b * np.exp(-c * t)


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(round(ts, 3), tz=UTC)


def _envelope(ts: float, start: float, end: float, pre: float, develop: float, post: float) -> float:
    """An event's effect, 0..1: a ramp of `pre` s before its start, `develop` s to full after it, a
    ramp down of `post` s after its end."""
    if ts < start:
        return 0.0 if ts <= start - pre else (ts - start + pre) / pre
    level = 1.0 if develop <= 0 else min(1.0, (min(ts, end) - start) / develop)
    if ts <= end:
        return level
    return 0.0 if ts >= end + post else level * (1 - (ts - end) / post)


# --- climate --------------------------------------------------------------------------------------


def _diurnal_shape(hour: np.ndarray) -> np.ndarray:
    """0 at 05:00, 1 at 15:00: the barn's daily temperature curve."""
    h = np.asarray(hour) % 24
    rising = (h >= 5) & (h < 15)
    return np.where(rising, 0.5 - 0.5 * np.cos(np.pi * (h - 5) / 10),
                    0.5 + 0.5 * np.cos(np.pi * ((h - 15) % 24) / 14))


@dataclass
class Weather:
    """The barn's true climate: daily maxima, minima and humidity (one per day from `day0`), per-zone
    offsets; hot days of heat waves are already in them."""

    day0: float  # epoch seconds of the first day's midnight
    tmax: np.ndarray
    tmin: np.ndarray
    rh: np.ndarray
    zone_offset: np.ndarray
    waves: list[tuple[float, float]]  # heat waves (start, end), epoch seconds

    @classmethod
    def draw(cls, rng: np.random.Generator, t0: float, t1: float, zones: int, *, base_max: float | None = None,
             waves_per_day: float = HEAT_WAVES_PER_DAY, sd: float = 2.0) -> Weather:
        day0 = (t0 // DAY - 3) * DAY
        days = int((t1 - day0) // DAY) + 4
        base = rng.uniform(19.0, 24.0) if base_max is None else base_max
        anomaly = np.empty(days)
        anomaly[0] = rng.normal(0, sd)
        for k in range(1, days):  # day-to-day persistence
            anomaly[k] = 0.6 * anomaly[k - 1] + math.sqrt(1 - 0.36) * rng.normal(0, sd)
        tmax = base + anomaly
        tmin = tmax - rng.normal(9.0, 1.5, days).clip(5, 13)
        rh = (rng.uniform(60, 72) - 1.5 * anomaly + rng.normal(0, 4, days)).clip(40, 90)
        waves = []
        for _ in range(rng.poisson(waves_per_day * (t1 - t0) / DAY)):
            first = int((t0 + rng.uniform(0, t1 - t0) - day0) // DAY)
            length = int(rng.integers(2, 4))
            extra = rng.uniform(6.0, 10.0)
            for k in range(first, min(first + length, days)):
                tmax[k] = max(tmax[k], base + extra)
                tmin[k] = max(tmin[k], base + extra - 9.0 + 0.4 * extra)
                rh[k] = min(rh[k] + 5, 90)
            waves.append((day0 + first * DAY, day0 + (first + length) * DAY))
        return cls(day0, tmax, tmin, rh, rng.normal(0, 0.6, zones), waves)

    def climate(self, ts: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """(temperature, humidity) of every zone at times `ts`: arrays of shape (len(ts), zones)."""
        ts = np.atleast_1d(np.asarray(ts, dtype=float))
        noons = self.day0 + (np.arange(len(self.tmax)) + 0.5) * DAY
        tmax, tmin, rh = (np.interp(ts, noons, a) for a in (self.tmax, self.tmin, self.rh))
        shape = _diurnal_shape((ts - self.day0) / HOUR)
        temp = tmin + (tmax - tmin) * shape
        humidity = (rh + 15 * (0.5 - shape)).clip(20, 98)
        return temp[:, None] + self.zone_offset[None, :], np.repeat(humidity[:, None], len(self.zone_offset), 1)

    def heat_spells(self, t0: float, t1: float) -> list[tuple[int, float, float, float]]:
        """(zone, start, end, peak THI) of every hour or longer at THI >= 72 (gaps under 30 min joined)."""
        grid = np.arange(t0, t1, 300.0)
        if not len(grid):
            return []
        index = thi(*self.climate(grid))
        spells = []
        for z in range(index.shape[1]):
            hot = np.flatnonzero(index[:, z] >= THI_STRESS)
            if not len(hot):
                continue
            breaks = np.flatnonzero(np.diff(hot) > 6) + 1  # a gap of more than 30 minutes
            for run in np.split(hot, breaks):
                begin, end = grid[run[0]], grid[run[-1]] + 300.0
                if end - begin >= HOUR:
                    spells.append((z, begin, end, float(index[run, z].max())))
        return spells


# --- the farm -------------------------------------------------------------------------------------


class HerdState:
    """The farm: its cows' traits, pens, milking, and the state carried from tick to tick."""

    def __init__(self, farm_id: int, cows: int, zones: int, rng: np.random.Generator, *, shape: str = "parlour",
                 milkings: int | None = 2, faults: bool = True, fahrenheit: int = 0) -> None:
        if shape not in SHAPES:
            raise ValueError(f"shape must be one of {', '.join(SHAPES)}, got {shape!r}")
        n = cows
        self.farm_id, self.cows, self.zones, self.rng, self.shape = farm_id, cows, zones, rng, shape
        self.milkings = int(rng.choice([2, 2, 3])) if milkings is None else milkings
        self.parity = rng.choice([1, 2, 3], n, p=[0.35, 0.28, 0.37])
        self.dim0 = rng.uniform(5, 330, n)  # days in milk at the origin (negative: calves during the run)
        self.pens = max(1, math.ceil(n / PEN_SIZE))
        self.pen = np.arange(n) * self.pens // max(n, 1)
        robot_pens = {"parlour": set(), "robots": set(range(self.pens)), "mixed": set(range(1, self.pens, 2))}[shape]
        if shape == "mixed" and self.pens == 1:
            robot_pens = set()
        self.robot = np.full(n, -1)  # the robot milking each cow; -1: the parlour
        robots = 0
        for p in sorted(robot_pens):
            members = np.flatnonzero(self.pen == p)
            k = max(1, round(len(members) / COWS_PER_ROBOT))
            self.robot[members] = robots + np.arange(len(members)) * k // len(members)
            robots += k
        self.robots = robots
        self.zone_of = self.pen % max(zones, 1)
        self.in_parlour = self.robot < 0
        # Behaviour: levels, amplitudes, phases (hours).
        self.activity_level = 50 * np.exp(rng.normal(0, 0.25, n))
        self.activity_amp = rng.normal(1.0, 0.15, n).clip(0.5, 1.5)
        self.budget_amp = rng.normal(1.0, 0.15, n).clip(0.5, 1.5)
        self.phase_min = np.round(rng.normal(0, 10, n)).astype(int)  # feed and milking times are the farm's
        self.rumination_level = rng.normal(500, 50, n).clip(330, 680)
        self.eating_level = rng.normal(270, 40, n).clip(150, 420)
        self.lying_level = rng.normal(690, 80, n).clip(450, 900)
        self.temperature_level = rng.normal(38.6, 0.15, n).clip(38.2, 39.0)
        self.temperature_amp = rng.uniform(0.15, 0.25, n)
        self.temperature_peak = rng.normal(18.0, 1.0, n)
        self.heat_sensitivity = rng.normal(1.0, 0.25, n).clip(0.4, 1.8)
        # Milk.
        self.yield_scale = np.exp(rng.normal(0, 0.12, n))
        self.conductivity_level = rng.normal(4.8, 0.35, n).clip(3.8, 6.0)
        self.flow = rng.normal(2.6, 0.4, n).clip(1.5, 4.0)  # kg/min
        self.frequency = rng.uniform(2.2, 3.6, n)  # robot milkings a day
        self.order = rng.random(n)  # place in the parlour order (consistent from day to day)
        self.bloody_colostrum = rng.random(n) < 0.15
        self.battery = rng.uniform(40, 100, n + zones)
        # Transport faults.
        self.faults = faults
        edge = rng.random(n + zones) < 0.2
        self.late_share = np.where(edge, rng.uniform(0.02, 0.06, n + zones), 0.0) if faults else np.zeros(n + zones)
        self.dup_share = 0.01 if faults else 0.0
        skewed = rng.random(n) < 0.04
        self.skew_s = np.where(skewed, rng.choice([-1, 1], n) * rng.uniform(60, 600, n), 0.0) if faults else np.zeros(n)
        self.fahrenheit = np.zeros(n, bool)
        self.fahrenheit[rng.choice(n, min(fahrenheit, n), replace=False)] = True
        self.origin: datetime | None = None
        self.weather: Weather | None = None
        self._compiled_for: int | None = None
        self._late: list[tuple[float, int, str, bytes]] = []
        self._seq = 0
        self.delayed = self.duplicated = 0  # messages the network delivered late, twice

    # --- planning ---------------------------------------------------------------------------------

    def plan(self, start: datetime, end: datetime, *, per_cow_day: float | None = None) -> Plan:
        """Draw the run's weather, events and confounders over [start, end).

        Rates are the literature's (module docstring); `per_cow_day`, when given, replaces every
        health and device kind's rate by that many events per cow-day (a stress test, not a farm)."""
        rng, n = self.rng, self.cows
        t0, t1 = start.timestamp(), end.timestamp()
        days = max((t1 - t0) / DAY, 1 / 24)
        self.origin = start
        truth: list[Event] = []
        context: list[Event] = []
        # Calvings in the run: a cow dry at the start calves at a uniform time (a herd calving all year).
        calving_in_run = rng.random(n) < days / (330 + days)
        self.dim0[calving_in_run] = -rng.uniform(0, days, int(calving_in_run.sum()))
        calving = t0 - self.dim0 * DAY
        for c in np.flatnonzero(self.dim0 < FRESH_DAYS):
            context.append(Event("fresh_cow", _dt(calving[c]), _dt(calving[c] + FRESH_DAYS * DAY), cow=int(c),
                                 pen=int(self.pen[c])))
        # Weather: heat waves, and heat stress wherever a zone's THI is 72 or more.
        waves = HEAT_WAVES_PER_DAY if per_cow_day is None else min(per_cow_day * 15, 0.5)
        self.weather = Weather.draw(rng, t0, t1, self.zones, waves_per_day=waves)
        context += [Event("heat_wave", _dt(a), _dt(b)) for a, b in self.weather.waves]
        truth += [Event("heat_stress", _dt(a), _dt(b), zone=z, intensity=round(peak, 1))
                  for z, a, b, peak in self.weather.heat_spells(t0 - DAY, t1)]
        truth += self._plan_health(t0, t1, calving, per_cow_day)
        lame = [e for e in truth if e.kind == "lameness"]
        truth += self._plan_oestrus(t0, t1, calving, lame)
        context += self._plan_context(t0, t1)
        truth.sort(key=lambda e: e.start)
        inside = [e for e in truth if start <= e.start < end]
        ongoing = [e for e in truth if e.start < start]
        return Plan(inside, ongoing, sorted(context, key=lambda e: e.start), self.weather)

    def _onsets(self, rate_year: float, t0: float, t1: float, calving: np.ndarray, *, lactating: bool,
                risk=None, lookback_days: float = 0.0) -> list[tuple[int, float]]:
        """(cow, onset) drawn day by day at `rate_year` per cow-year (x risk(days in milk))."""
        rng, n = self.rng, self.cows
        first = t0 - lookback_days * DAY
        nd = max(1, math.ceil((t1 - first) / DAY))
        day_start = first + np.arange(nd) * DAY
        dim = (day_start[:, None] + DAY / 2 - calving[None, :]) / DAY
        p = np.full((nd, n), rate_year / 365.0)
        if risk is not None:
            p = p * risk(dim)
        if lactating:
            p = np.where(dim >= 0, p, 0.0)
        hits = np.argwhere(rng.random((nd, n)) < p)
        onsets = day_start[hits[:, 0]] + rng.uniform(0, DAY, len(hits))
        return [(int(c), float(t)) for (_, c), t in zip(hits, onsets, strict=True) if t < t1]

    def _plan_health(self, t0: float, t1: float, calving: np.ndarray, per_cow_day: float | None) -> list[Event]:
        rng = self.rng
        out: list[Event] = []
        spans: dict[tuple[str, int], list[tuple[float, float]]] = {}

        def add(kind: str, cow: int | None, begin: float, hours: float, intensity: float, zone: int | None = None):
            end = begin + hours * HOUR
            key = (kind, cow if cow is not None else -1 - (zone or 0))
            if any(begin < b and a < end for a, b in spans.get(key, ())):
                return  # one episode of a kind at a time
            spans.setdefault(key, []).append((begin, end))
            out.append(Event(kind, _dt(begin), _dt(end), cow=cow, zone=zone, intensity=round(float(intensity), 3)))

        def rate(kind: str) -> float:
            return RATES[kind] if per_cow_day is None else per_cow_day * 365

        early = (lambda dim: np.where(dim < 30, 3.0, 1.0)) if per_cow_day is None else None
        for c, t in self._onsets(rate("mastitis"), t0, t1, calving, lactating=True, risk=early):
            severity = rng.random()
            if severity < 0.6:
                multiple = rng.uniform(1.12, 1.25)
            elif severity < 0.9:
                multiple = rng.uniform(1.2, 1.35)
            else:
                multiple = rng.uniform(1.3, 1.5)
                add("fever", c, t + rng.uniform(0, 6) * HOUR, rng.uniform(24, 48), rng.uniform(40.0, 41.0))
            add("mastitis", c, t, rng.uniform(48, 120), multiple)
        for c, t in self._onsets(rate("subclinical_mastitis"), t0, t1, calving, lactating=True):
            add("subclinical_mastitis", c, t, rng.uniform(30, 120) * 24, rng.uniform(1.04, 1.12))
        if per_cow_day is None:  # infected at the start: 15 % of the cows milking then
            for c in np.flatnonzero((rng.random(self.cows) < 0.15) & (calving < t0 - 5 * DAY)):
                begin = t0 - rng.uniform(0, min(60.0, (t0 - calving[c]) / DAY - 1)) * DAY
                add("subclinical_mastitis", int(c), begin, rng.uniform(30, 120) * 24, rng.uniform(1.04, 1.12))
        for c, t in self._onsets(rate("fever"), t0, t1, calving, lactating=False):
            add("fever", c, t, rng.uniform(24, 72), rng.uniform(39.7, 41.0))
        for c, t in self._onsets(rate("rumination_drop"), t0, t1, calving, lactating=False):
            add("rumination_drop", c, t, rng.uniform(24, 96), rng.uniform(0.4, 0.75))
        if per_cow_day is None:  # fresh cows' metritis, ketosis and displaced abomasum
            for c in np.flatnonzero((calving > t0 - 21 * DAY) & (calving < t1)):
                if rng.random() < 0.15:
                    add("fever", int(c), calving[c] + rng.uniform(3, 10) * DAY, rng.uniform(24, 72),
                        rng.uniform(39.7, 41.0))
                if rng.random() < 0.08:
                    add("rumination_drop", int(c), calving[c] + rng.uniform(3, 21) * DAY, rng.uniform(24, 96),
                        rng.uniform(0.4, 0.75))
        for c, t in self._onsets(rate("yield_drop"), t0, t1, calving, lactating=True):
            add("yield_drop", c, t, rng.uniform(24, 72), rng.uniform(0.7, 0.88))
        for c, t in self._onsets(rate("lameness"), t0, t1, calving, lactating=False):
            add("lameness", c, t, rng.uniform(7, 21) * 24, rng.uniform(0.6, 0.85))
        if per_cow_day is None:  # lame at the start
            for c in np.flatnonzero(rng.random(self.cows) < 0.08):
                hours = rng.uniform(7, 21) * 24
                begin = t0 - rng.uniform(0, min(hours / 24 - 1, 20)) * DAY
                add("lameness", int(c), begin, hours, rng.uniform(0.6, 0.85))
        for c, t in self._onsets(RATES["device_failure"] if per_cow_day is None else per_cow_day * 365, t0, t1,
                                 calving, lactating=False):
            add("device_failure", c, t, min(max(math.exp(rng.normal(math.log(6), 0.9)), 2.0), 48.0), 0.0)
        stuck_rate = RATES["stuck_sensor"] / 365 if per_cow_day is None else per_cow_day * 15
        for z in range(self.zones):
            for _ in range(rng.poisson(stuck_rate * (t1 - t0) / DAY)):
                add("stuck_sensor", None, rng.uniform(t0, t1), rng.uniform(12, 24), 0.0, zone=z)
        return out

    def _plan_oestrus(self, t0: float, t1: float, calving: np.ndarray, lame: list[Event]) -> list[Event]:
        rng = self.rng
        out: list[Event] = []
        lame_spans: dict[int, list[tuple[float, float]]] = {}
        for e in lame:
            lame_spans.setdefault(e.cow, []).append((e.start.timestamp(), e.end.timestamp()))
        for c in range(self.cows):
            dim_start = self.dim0[c]
            cycles_open = max(0, math.floor((dim_start - 50) / 21))
            if dim_start < 0 or rng.random() < 1 - 0.8 ** cycles_open or rng.random() < 0.15:
                continue  # dry (calving in the run), pregnant, or anoestrous
            first = float(np.clip(rng.normal(33, 8), 18, 60))  # days in milk of the first ovulation
            length = float(np.clip(rng.normal(21, 1.5), 18, 24))
            if dim_start < first:
                day, silent = first, rng.random() < 0.5
            else:
                day, silent = dim_start - rng.uniform(0, length) - length, False
            while True:
                onset = calving[c] + day * DAY
                if onset >= t1:
                    break
                if not silent and onset >= t0 - DAY:
                    lamed = any(a <= onset < b for a, b in lame_spans.get(c, ()))
                    daily = float(wood_yield(np.array([day]), self.parity[c])[0] * self.yield_scale[c])
                    weak = rng.random() < 0.25 + 0.15 * (daily > 39.5) + 0.25 * lamed
                    multiple = rng.uniform(1.3, WEAK_HEAT) if weak else rng.uniform(2.0, 4.0)
                    hours = float(np.clip(rng.normal(12, 4) - 3 * (daily > 39.5), 6, 24))
                    if weak:
                        hours = max(6.0, hours * 0.8)
                    out.append(Event("oestrus", _dt(onset), _dt(onset + hours * HOUR), cow=c,
                                     intensity=round(multiple, 2)))
                    if day >= 50 and rng.random() < 0.3:
                        break  # conceived
                silent = False
                day += float(np.clip(rng.normal(21, 1.5), 18, 24))
        return out

    def _plan_context(self, t0: float, t1: float) -> list[Event]:
        rng, out = self.rng, []
        span = t1 - t0
        days = span / DAY
        for _ in range(rng.poisson(FEED_CHANGES_PER_DAY * days)):
            begin = rng.uniform(t0, t1)
            pen = None if rng.random() < 0.5 else int(rng.integers(0, self.pens))
            out.append(Event("feed_change", _dt(begin), _dt(begin + rng.uniform(1, 3) * DAY), pen=pen,
                             intensity=round(rng.uniform(0.75, 0.85), 3)))
        for _ in range(rng.poisson(REGROUPINGS_PER_DAY * days)):
            pen = int(rng.integers(0, self.pens))
            members = np.flatnonzero(self.pen == pen)
            begin = (t0 + rng.uniform(0, span)) // DAY * DAY + rng.uniform(8, 16) * HOUR
            if not len(members) or begin >= t1:
                continue
            moved = rng.choice(members, max(1, round(rng.uniform(0.03, 0.10) * len(members))), replace=False)
            for c in moved:
                out.append(Event("regrouping", _dt(begin), _dt(begin + rng.uniform(12, 36) * HOUR), cow=int(c),
                                 pen=pen, intensity=round(rng.uniform(1.2, 1.6), 3)))
        if self.in_parlour.any():
            hours = MILKING_HOURS[self.milkings]
            for _ in range(rng.poisson(BREAKDOWNS_PER_UNIT_DAY * days)):
                day = (t0 + rng.uniform(0, span)) // DAY * DAY
                scheduled = day + hours[int(rng.integers(0, len(hours)))] * HOUR
                if t0 <= scheduled < t1:
                    out.append(Event("breakdown", _dt(scheduled), _dt(scheduled + rng.uniform(2, 6) * HOUR)))
        for r in range(self.robots):
            for _ in range(rng.poisson(BREAKDOWNS_PER_UNIT_DAY * days)):
                begin = rng.uniform(t0, t1)
                pen = int(self.pen[np.flatnonzero(self.robot == r)[0]])
                out.append(Event("breakdown", _dt(begin), _dt(begin + rng.uniform(2, 6) * HOUR), pen=pen, robot=r))
        return out

    # --- the tick ---------------------------------------------------------------------------------

    def _compile(self, events: Sequence[Event], t: datetime) -> None:
        """Index the events a run's messages follow (once per events list)."""
        self._compiled_for = id(events)
        self._events_ref = events  # keeps the id valid
        everything = events.everything() if isinstance(events, Plan) else sorted(events, key=lambda e: e.start)
        if self.origin is None:
            self.origin = t
        t0 = self.origin.timestamp()
        self.calving = t0 - self.dim0 * DAY
        for e in everything:
            if e.kind == "fresh_cow":
                self.calving[e.cow] = e.start.timestamp()
        if isinstance(events, Plan) and events.weather is not None:
            self.weather, self._forced_heat = events.weather, []
        else:
            if self.weather is None:
                self.weather = Weather.draw(self.rng, t0 - DAY, t0 + 400 * DAY, self.zones, base_max=21.0,
                                            waves_per_day=0.0, sd=1.0)
            self._forced_heat = [(e.zone, e.start.timestamp(), e.end.timestamp()) for e in everything
                                 if e.kind == "heat_stress"]
        self._stuck = [(e.zone, e.start.timestamp(), e.end.timestamp()) for e in everything if e.kind == "stuck_sensor"]
        self._stuck_payload: dict[int, dict] = {}
        self._parlour_delay = {round(e.start.timestamp()): (e.end - e.start).total_seconds() for e in everything
                               if e.kind == "breakdown" and e.robot is None}
        self._robot_down = [(e.robot, e.start.timestamp(), e.end.timestamp()) for e in everything
                            if e.kind == "breakdown" and e.robot is not None]
        effects = []
        for e in everything:
            if e.kind in ("heat_stress", "stuck_sensor", "breakdown", "heat_wave", "fresh_cow"):
                continue
            pre, develop, post = (h * HOUR for h in RAMPS_H.get(e.kind, (0, 0, 0)))
            a, b = e.start.timestamp(), e.end.timestamp()
            effects.append((a - pre, b + post, e.kind, e.cow, e.pen, e.intensity, a, b, pre, develop, post))
        effects.sort(key=lambda x: x[0])
        self._effects, self._next_effect, self._active_effects = effects, 0, []
        # Milking.
        n = self.cows
        hours = MILKING_HOURS[self.milkings]
        first_day = (t.timestamp() // DAY) * DAY
        # Sessions from the first tick on: the cows were all milked at the last one before it (below).
        self._next_sessions = sorted(d + h * HOUR for d in (first_day, first_day + DAY) for h in hours
                                     if d + h * HOUR >= t.timestamp())[:len(hours)]
        self._sessions: list[tuple[float, float, np.ndarray, np.ndarray]] = []
        parlour_cows = int(self.in_parlour.sum())
        self._session_hours = max(parlour_cows / PARLOUR_COWS_PER_HOUR, 0.25)
        self._tables = _day_tables(self.milkings, self._session_hours)
        self._table_row = np.where(self.in_parlour, 0, 1)
        ts = t.timestamp()
        # The last milking before the first tick: a parlour cow at the last session, a robot cow her
        # own interval ago; what she has secreted since is in the udder.
        previous = max((d + h * HOUR for d in (first_day - DAY, first_day) for h in hours if d + h * HOUR <= ts),
                       default=ts - 12 * HOUR)
        since = np.where(self.in_parlour, ts - previous, self.rng.uniform(0, 24 / self.frequency) * HOUR)
        self.last_milked = ts - since
        self.udder = np.zeros(n)
        lactating = self.calving <= ts
        self.udder[lactating] = (self._secretion(ts, np.ones(n), 0.0) * np.minimum(since, ts - self.calving)
                                 / HOUR)[lactating]
        self.next_visit = np.where(self.in_parlour, np.inf, self.last_milked + 24 / self.frequency * HOUR)
        self.next_visit = np.where(lactating, self.next_visit, np.maximum(self.next_visit, self.calving + 4 * HOUR))
        self.window = max(1, round(COLLAR_WINDOW_H * HOUR / self._interval))
        self._budget = np.zeros((3, self.window, n))
        self._budget_filled = 0
        self._ar = np.zeros((5, n))  # slow per-cow wobbles: activity, rumination, lying, temperature, yield

    def _secretion(self, ts: float, multiplier: np.ndarray, heat_lag: np.ndarray | float) -> np.ndarray:
        """Kilograms an hour each cow secretes now."""
        dim = (ts - self.calving) / DAY
        daily = wood_yield(dim, self.parity) * self.yield_scale * multiplier
        if self.milkings == 3:
            daily = np.where(self.in_parlour, daily * 1.10, daily)
        daily = np.where(self.in_parlour, daily, daily * (1 + 0.05 * (self.frequency - 2.5)))
        return np.where(dim >= 0, daily * (1 - np.minimum(0.07 * heat_lag, 0.10)) / 24, 0.0)

    def messages(self, t: datetime, interval_s: float, events: Sequence[Event]) -> Iterator[tuple[str, bytes]]:
        self._interval = interval_s
        if self._compiled_for != id(events):
            self._compile(events, t)
        ts = t.timestamp()
        yield from self._due_late(ts)
        eff = self._effects_at(ts)
        temp_zone, rh_zone = self.weather.climate(ts)
        temp_zone, rh_zone = temp_zone[0], rh_zone[0]
        for z, a, b in self._forced_heat:  # a hand-made heat event: the zone at 27 degC or more, muggier
            if a <= ts < b:
                temp_zone[z], rh_zone[z] = max(temp_zone[z] + 9, 27.0), min(rh_zone[z] + 10, 98.0)
        # Heat load from THI 68 (Zimbelman et al. 2009), per cow; its effects are capped at the literature's.
        heat = np.clip((thi(temp_zone, rh_zone) - 68) / 10, 0, 1.5)[self.zone_of] * self.heat_sensitivity
        lagged = self._heat_lag(ts)
        yield from self._collars(t, ts, interval_s, eff, heat, lagged)
        yield from self._climate(t, ts, interval_s, temp_zone, rh_zone)
        yield from self._milkings(t, ts, interval_s, eff, lagged)

    def _heat_lag(self, ts: float) -> np.ndarray:
        """Each cow's heat load over the day before yesterday (yield follows heat with a lag of 1-2 days)."""
        temp, rh = self.weather.climate(ts - DAY - np.arange(0, DAY, 3 * HOUR))
        per_zone = np.clip((thi(temp, rh) - 68) / 10, 0, 1.5).mean(axis=0)
        return per_zone[self.zone_of] * self.heat_sensitivity

    def _effects_at(self, ts: float) -> dict[str, np.ndarray]:
        """Every signal's multiplier (or addition) per cow from the events and context under way."""
        n = self.cows
        act, rum, eat, lie, yld, cond = (np.ones(n) for _ in range(6))
        temp_add, fever_w, fever_set, blood, noise = np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n), np.ones(n)
        visit = np.ones(n)
        silent = np.zeros(n, bool)
        effects = self._effects
        while self._next_effect < len(effects) and effects[self._next_effect][0] <= ts:
            self._active_effects.append(effects[self._next_effect])
            self._next_effect += 1
        self._active_effects = [e for e in self._active_effects if e[1] > ts]
        for _, _, kind, c, pen, m, a, b, pre, develop, post in self._active_effects:
            s = _envelope(ts, a, b, pre, develop, post)
            if s <= 0:
                continue
            if kind == "oestrus":
                m = 3.0 if m is None else m
                act[c] *= 1 + (m - 1) * s
                rum[c] *= 1 - 0.17 * s * min(1.0, (m - 1) / 1.5)
                lie[c] *= 1 - 0.3 * s
                eat[c] *= 1 - 0.15 * s
                temp_add[c] += 0.3 * s
                yld[c] *= 1 - 0.04 * s
            elif kind == "fever":
                fever_set[c] = max(fever_set[c], 40.0 if m is None else m)
                fever_w[c] = max(fever_w[c], s)
                rum[c] *= 1 - 0.35 * s
                act[c] *= 1 - 0.2 * s
                lie[c] *= 1 + 0.1 * s
                eat[c] *= 1 - 0.3 * s
                yld[c] *= 1 - 0.2 * s
                visit[c] *= 1 + 0.3 * s
            elif kind == "mastitis":
                m = 1.3 if m is None else m
                cond[c] *= 1 + (m - 1) * s
                if a <= ts <= b + DAY:  # the clinical signs: a day longer than the event, as milk recovers
                    yld[c] *= 1 - min(0.3, 0.1 + (m - 1) * 0.6) * s
                    blood[c] = max(blood[c], 0.2)
                    if m >= 1.2:  # moderate and severe cases eat and ruminate less
                        rum[c] *= 1 - 0.1 * s
                else:  # conductivity rises before the signs and falls slowly after them
                    yld[c] *= 1 - 0.05 * s
            elif kind == "subclinical_mastitis":
                m = 1.08 if m is None else m
                cond[c] *= 1 + (m - 1) * s
                yld[c] *= 1 - (m - 1) * 0.4 * s
            elif kind == "rumination_drop":
                m = 0.6 if m is None else m
                rum[c] *= 1 - (1 - m) * s
                eat[c] *= 1 - 0.6 * (1 - m) * s
                act[c] *= 1 - 0.15 * s
                lie[c] *= 1 + 0.05 * s
                yld[c] *= 1 - 0.5 * (1 - m) * s
                visit[c] *= 1 + 0.15 * s
            elif kind == "yield_drop":
                m = 0.8 if m is None else m
                yld[c] *= 1 - (1 - m) * s
                rum[c] *= 1 - 0.05 * s
            elif kind == "lameness":
                m = 0.7 if m is None else m
                severity = (1 - m) / 0.4  # 0.375 (activity -15 %) .. 1 (-40 %)
                act[c] *= 1 - (1 - m) * s
                lie[c] *= 1 + (0.10 + 0.15 * severity) * s
                yld[c] *= 1 - (0.05 + 0.10 * severity) * s
                rum[c] *= 1 - 0.05 * s
                eat[c] *= 1 - 0.1 * s
                visit[c] *= 1 + 0.3 * s
            elif kind == "device_failure":
                silent[c] = a <= ts < b
            elif kind == "feed_change":
                who = slice(None) if pen is None else self.pen == pen
                m = 0.8 if m is None else m
                rum[who] *= 1 - (1 - m) * s
                eat[who] *= 1 - 0.4 * (1 - m) * s
                yld[who] *= 1 + 0.05 * s * math.sin(2 * math.pi * (ts - a) / DAY)
            elif kind == "regrouping":
                m = 1.4 if m is None else m
                act[c] *= 1 + (m - 1) * s
                rum[c] *= 1 - 0.15 * s
                lie[c] *= 1 - 0.2 * s
                eat[c] *= 1 - 0.1 * s
        # Fresh cows: calving and the days after it.
        since = (ts - self.calving) / DAY
        near = np.flatnonzero((since > -1.0) & (since < FRESH_DAYS))
        if len(near):
            d = since[near]
            before = d < 0
            rum[near] *= np.where(before, 0.75, 0.7 + 0.3 * np.minimum(d / FRESH_DAYS, 1.0))
            act[near] *= np.where(before, 1.25, np.where(d < 3, 0.9, 1.0))
            lie[near] *= np.where(before, 0.85, np.where(d < 3, 0.9, 1.0))
            eat[near] *= np.where(before, 0.8, 0.8 + 0.2 * np.minimum(d / FRESH_DAYS, 1.0))
            temp_add[near] += np.where(before, 0.0, 0.2 * np.clip(1 - d / 5, 0, 1))
            cond[near] *= np.where(before, 1.0, 1 + 0.25 * np.clip(1 - d / 3, 0, 1))
            blood[near] = np.maximum(blood[near], np.where(self.bloody_colostrum[near] & (d >= 0) & (d < 4), 0.5, 0.0))
            noise[near] = 1.5
        self._visit = visit
        return {"act": act, "rum": rum, "eat": eat, "lie": lie, "yld": yld, "cond": cond, "temp_add": temp_add,
                "fever_w": fever_w, "fever_set": fever_set, "blood": blood, "noise": noise, "visit": visit,
                "silent": silent}

    def _away(self, ts: float, interval_s: float) -> np.ndarray:
        """The share of the tick each cow spent away from her pen for milking (walking, waiting)."""
        away = np.zeros(self.cows)
        for _, _, fetch, milk in self._sessions:
            overlap = np.minimum(ts, milk + 600) - np.maximum(ts - interval_s, fetch)
            away += np.nan_to_num(np.clip(overlap, 0, interval_s) / interval_s)
        recently = ts - self.last_milked < interval_s
        away[~self.in_parlour & recently] += min(1.0, 720 / interval_s)
        return np.minimum(away, 1.0)

    def _collars(self, t: datetime, ts: float, interval_s: float, eff: dict[str, np.ndarray], heat: np.ndarray,
                 lagged: np.ndarray) -> Iterator[tuple[str, bytes]]:
        rng, n, farm = self.rng, self.cows, self.farm_id
        minute = int((ts % DAY) // 60)
        index = (minute - self.phase_min) % 1440
        row = self._table_row
        tables = self._tables
        # Slow wobbles (AR(1), 12 h memory; temperature 3 h).
        for k, (tau, sd) in enumerate(((12, 0.08), (12, 0.05), (12, 0.05), (3, 0.08), (24, 0.04))):
            rho = math.exp(-interval_s / (tau * HOUR))
            self._ar[k] = rho * self._ar[k] + math.sqrt(1 - rho * rho) * rng.normal(0, sd, n)
        away = self._away(ts, interval_s)
        night = tables["night"][index]
        day_active = 1 - np.minimum(0.15 * heat, 0.3) * (1 - night)
        activity = (self.activity_level * (1 + self.activity_amp * (tables["act"][row, index] - 1))
                    * (1 + 1.2 * away) * eff["act"] * day_active * (1 + self._ar[0])
                    * np.exp(rng.normal(-0.045, 0.3, n)))
        budget = np.empty((3, n))
        for k, (name, level, ar) in enumerate((("rum", self.rumination_level, 1), ("eat", self.eating_level, None),
                                               ("lie", self.lying_level, 2))):
            share = level / 1440 * (1 + self.budget_amp * (tables[name][row, index] - 1)) * eff[name]
            if ar is not None:
                share = share * (1 + self._ar[ar])
            budget[k] = share * np.exp(rng.normal(0, 0.2, n) * eff["noise"])
        budget[0] *= (1 - 0.5 * away) * (1 - np.minimum(0.12 * heat, 0.2))
        budget[1] *= 1 - away
        budget[2] *= (1 - away) * (1 - np.minimum(0.1 * heat, 0.2))
        self._budget[:, self._budget_filled % self.window] = np.clip(budget, 0.0, 0.98)
        self._budget_filled += 1
        rates = self._budget[:, :min(self._budget_filled, self.window)].mean(axis=1) * 1440
        hour = (ts % DAY) / HOUR
        circadian = np.cos(2 * np.pi * (hour - self.temperature_peak) / 24)
        temperature = (self.temperature_level + self.temperature_amp * circadian + self._ar[3] + rng.normal(0, 0.05, n)
                       + eff["temp_add"] + np.minimum(0.45 * heat, 0.8))
        w = eff["fever_w"]
        fever = eff["fever_set"] + 0.1 * circadian + rng.normal(0, 0.08, n)
        temperature = np.where(w > 0, (1 - w) * temperature + w * np.maximum(fever, temperature), temperature)
        self._body_temperature = temperature
        self.battery[:n] -= interval_s / DAY * 0.2
        silent = eff["silent"]
        skewed = self.skew_s != 0
        stamp = t.isoformat()
        stamps = [(t + timedelta(seconds=float(s))).isoformat() if k else stamp
                  for k, s in zip(skewed, self.skew_s, strict=True)] if skewed.any() else None
        acts = np.round(np.maximum(activity, 0.0), 2).tolist()
        rum_l, eat_l, lie_l = (np.round(r, 1).tolist() for r in rates)
        temps = np.round(temperature, 2).tolist()
        battery = self.battery.astype(int).tolist()
        fahrenheit = self.fahrenheit
        u = rng.random(n) if self.faults else None
        farm_uid = f"COL-F{farm:02d}-"
        for c in np.flatnonzero(~silent).tolist():
            code = f"COW-{c + 1:05d}"
            when = stamps[c] if stamps else stamp
            temp_part = "" if fahrenheit[c] else f',"temperature_c":{temps[c]}'
            payload = (f'{{"timestamp":"{when}","device_id":"{farm_uid}{c:05d}","animal_id":"{code}",'
                       f'"activity_index":{acts[c]},"rumination_minutes":{rum_l[c]},"eating_minutes":{eat_l[c]},'
                       f'"resting_minutes":{lie_l[c]}{temp_part},"battery_level":{battery[c]}}}').encode()
            topic = f"dairy/farm/{farm}/animal/{code}/activity/telemetry"
            yield from self._deliver(ts, topic, payload, u[c] if u is not None else 1.0, self.late_share[c])
        if fahrenheit.any():
            readings = [{"device_uid": collar_uid(farm, c), "device_type": "collar", "farm_id": farm,
                         "metric_name": "body_temperature_c", "metric_value": round(temps[c] * 1.8 + 32, 2),
                         "metric_unit": "degF", "timestamp": stamps[c] if stamps else stamp, "animal_id": cow_code(c)}
                        for c in np.flatnonzero(fahrenheit & ~silent).tolist()]
            if readings:
                yield SENSOR_BATCH, msgspec.json.encode({"readings": readings})
        if t.minute == 0 and t.second < interval_s:  # hourly device status
            for c in np.flatnonzero(~silent).tolist():
                yield (f"system/farm/{farm}/device/{collar_uid(farm, c)}/status", msgspec.json.encode({
                    "timestamp": stamps[c] if stamps else stamp, "device_type": "collar",
                    "battery_level": battery[c], "signal_strength": int(rng.integers(-90, -60)),
                    "firmware_version": "2.1.0"}))

    def _deliver(self, ts: float, topic: str, payload: bytes, u: float, late_share: float
                 ) -> Iterator[tuple[str, bytes]]:
        """A message as the network delivers it: now, hours late, or twice."""
        if u < late_share:
            self._seq += 1
            self.delayed += 1
            heapq.heappush(self._late, (ts + self.rng.uniform(1, 6) * HOUR, self._seq, topic, payload))
            return
        yield topic, payload
        if u > 1 - self.dup_share:
            self.duplicated += 1
            yield topic, payload

    def _due_late(self, ts: float) -> Iterator[tuple[str, bytes]]:
        while self._late and self._late[0][0] <= ts:
            _, _, topic, payload = heapq.heappop(self._late)
            yield topic, payload

    def _climate(self, t: datetime, ts: float, interval_s: float, temp: np.ndarray, rh: np.ndarray
                 ) -> Iterator[tuple[str, bytes]]:
        rng, farm, n = self.rng, self.farm_id, self.cows
        stamp = t.isoformat()
        for z in range(self.zones):
            stuck = any(zz == z and a <= ts < b for zz, a, b in self._stuck)
            if stuck and z in self._stuck_payload:
                readings, battery, signal = self._stuck_payload[z]
            else:
                ventilation = np.clip((temp[z] - 18) / 10, 0, 1)  # fans and open curtains when warm
                readings = {"temperature_c": round(float(temp[z] + rng.normal(0, 0.2)), 2),
                            "humidity_percent": round(float(np.clip(rh[z] + rng.normal(0, 1.5), 5, 99)), 1),
                            "nh3_ppm": round(max(float(9 - 4 * ventilation + rng.normal(0, 1)), 0.0), 2),
                            "co2_ppm": round(float(1200 - 450 * ventilation + rng.normal(0, 40)))}
                battery, signal = int(self.battery[n + z]), int(rng.integers(-85, -55))
                if stuck:
                    self._stuck_payload[z] = (readings, battery, signal)
                else:
                    self._stuck_payload.pop(z, None)
            topic = f"dairy/farm/{farm}/barn/1/zone/{zone_id(farm, z)}/sensor/{zone_uid(farm, z)}/telemetry"
            payload = msgspec.json.encode({"timestamp": stamp, "device_id": zone_uid(farm, z), "readings": readings,
                                           "battery_level": battery, "signal_strength": signal})
            u = float(rng.random()) if self.faults else 1.0
            yield from self._deliver(ts, topic, payload, u, self.late_share[n + z])

    def _milkings(self, t: datetime, ts: float, interval_s: float, eff: dict[str, np.ndarray],
                  lagged: np.ndarray) -> Iterator[tuple[str, bytes]]:
        rng, n = self.rng, self.cows
        rate = self._secretion(ts, eff["yld"] * (1 + self._ar[4]), lagged)
        full = np.clip((ts - self.last_milked) / HOUR - 14, 0, 10) / 10  # a full udder secretes less
        self.udder += rate * (1 - 0.3 * full) * interval_s / HOUR
        # Parlour sessions: created an hour before they start, dropped an hour after they end.
        while self.in_parlour.any() and self._next_sessions[0] - HOUR <= ts:
            scheduled = self._next_sessions.pop(0)
            self._next_sessions.append(scheduled + DAY)
            self._sessions.append(self._session(scheduled))
        self._sessions = [s for s in self._sessions if s[1] + HOUR > ts]
        milked = np.zeros(n, bool)
        for _, _, _, milk in self._sessions:
            milked |= (milk > ts - interval_s) & (milk <= ts)
        # Robots: each cow when she comes (or is fetched); a robot that is down makes her wait.
        due = ~self.in_parlour & (self.next_visit <= ts)
        for r, a, b in self._robot_down:
            if a <= ts < b:
                waiting = due & (self.robot == r)
                self.next_visit[waiting] = b + rng.uniform(0, 1.5, int(waiting.sum())) * HOUR
                due &= ~waiting
        milked |= due
        cows = np.flatnonzero(milked & (self.calving <= ts))
        if not len(cows):
            return
        robot = ~self.in_parlour[cows]
        if robot.any():
            rc = cows[robot]
            hours = 24 / self.frequency[rc] * np.exp(rng.normal(0, 0.2, len(rc))) * eff["visit"][rc]
            next_time = ts + np.clip(hours, 6, 16) * HOUR
            night = ((next_time % DAY) / HOUR < 5) & (rng.random(len(rc)) < 0.4)  # fewer visits before dawn
            next_time = np.where(night, next_time + rng.uniform(0, 2, len(rc)) * HOUR, next_time)
            self.next_visit[rc] = np.minimum(next_time, ts + 16 * HOUR)
        complete = np.where(rng.random(len(cows)) < np.where(robot, 0.03, 0.015), rng.uniform(0.3, 0.8, len(cows)), 1.0)
        kg = self.udder[cows] * complete
        self.udder[cows] -= kg
        kg = kg * rng.normal(1, 0.03, len(cows))
        self.last_milked[cows] = ts
        conductivity = self.conductivity_level[cows] * eff["cond"][cows] * rng.normal(1, 0.025, len(cows))
        blood = rng.random(len(cows)) < eff["blood"][cows]
        milk_temp = 37.0 + 0.8 * (self._body_temperature[cows] - 38.6) + rng.normal(0, 0.2, len(cows))
        farm, stamp = self.farm_id, t.isoformat()
        for i, c in enumerate(cows.tolist()):
            if robot[i]:
                r = int(self.robot[c])
                parlor, stall, device, gate = ROBOT_PARLOUR_ID, r + 1, robot_uid(farm, r), 10 + r + 1
                reader = f"RFID-F{farm:02d}-AMS-{r + 1:02d}"
            else:
                stall = c % 24 + 1
                parlor, device, gate = PARLOUR_ID, f"MM-F{farm:02d}-S{stall:02d}", 1
                reader = f"RFID-F{farm:02d}-GATE-01"
            litres = max(float(kg[i]), 0.05) / 1.03
            duration = int(max(litres * 1.03 / self.flow[c] * 60 + rng.normal(90, 20), 120))
            yield (f"dairy/farm/{farm}/rfid/gate/{gate}/tag/read", msgspec.json.encode({
                "timestamp": stamp, "reader_id": reader, "antenna_id": 1,
                "tag_epc": f"E2003415{farm:04X}{c:08X}", "animal_id": cow_code(c), "rssi": round(rng.normal(-55, 5), 1),
                "read_count": int(rng.integers(1, 6)), "direction": "inbound"}))
            yield (f"dairy/farm/{farm}/milking/parlor/{parlor}/stall/{stall}/session/end", msgspec.json.encode({
                "timestamp": stamp, "session_id": f"SES-F{farm}-{c:05d}-{t:%Y%m%d%H%M}",
                "animal_id": cow_code(c), "device_id": device,
                "session_data": {"start_time": (t - timedelta(seconds=duration)).isoformat(), "end_time": stamp,
                                 "duration_seconds": duration},
                "milk_data": {"total_volume_liters": round(litres, 2),
                              "average_flow_lpm": round(litres / (duration / 60), 2),
                              "peak_flow_lpm": round(litres / (duration / 60) * 1.5, 2),
                              "temperature_celsius": round(float(milk_temp[i]), 1),
                              "conductivity_ms_cm": round(float(conductivity[i]), 2)},
                "quality_flags": {"blood_detected": bool(blood[i])}}))

    def _session(self, scheduled: float) -> tuple[float, float, np.ndarray, np.ndarray]:
        """A parlour milking: (start, end, when each cow's pen is fetched, when she is milked); NaN for
        cows not milked in it. A breakdown delays it; lame and sick cows come late in the order."""
        start = scheduled + self._parlour_delay.get(round(scheduled), 0.0)
        n = self.cows
        cows = np.flatnonzero(self.in_parlour & (self.calving <= start))
        fetch, milk = np.full(n, np.nan), np.full(n, np.nan)
        if not len(cows):
            return start, start, fetch, milk
        span = self._session_hours * HOUR * len(cows) / max(int(self.in_parlour.sum()), 1)
        late = np.clip((getattr(self, "_visit", np.ones(n))[cows] - 1) / 0.3, 0, 1) * 0.5
        place = self.order[cows] + self.rng.normal(0, 0.05, len(cows)) + late
        order = np.lexsort((place, self.pen[cows]))  # pen by pen, each in its usual order
        milk[cows[order]] = start + (np.arange(len(cows)) + 0.5) / len(cows) * span
        pens = self.pen[cows[order]]
        first_of_pen = {int(p): milk[cows[order][np.argmax(pens == p)]] - 15 * 60 for p in np.unique(pens)}
        fetch[cows] = [first_of_pen[int(p)] for p in self.pen[cows]]
        return start, start + span, fetch, milk


def _day_tables(milkings: int, session_hours: float) -> dict[str, np.ndarray]:
    """Herd-level daily rhythms, one value a minute, normalised to a daily mean of 1: row 0 for a
    parlour farm (feed after milking, push-ups every 2 h), row 1 for robots (feed at 06:30 and 17:30,
    hourly push-ups by a feed pusher, less contrast)."""
    hour = np.arange(1440) / 60.0
    night = 0.5 * (1 + np.cos(2 * np.pi * (hour - 2.0) / 24))  # 1 at 02:00, 0 at 14:00

    def since(h0: float) -> np.ndarray:
        return (hour - h0) % 24

    rows: dict[str, list[np.ndarray]] = {"act": [], "rum": [], "eat": [], "lie": []}
    milk_hours = MILKING_HOURS[milkings]
    layouts = (([milk_hours[0] + session_hours + 0.25, milk_hours[-1] + session_hours + 0.25],
                [h for h in np.arange(8.0, 23.0, 2.0)], 1.0, 1.0),
               ([6.5, 17.5], [h for h in np.arange(0.0, 24.0, 1.0)], 0.5, 0.7))
    for feeds, pushes, peak, contrast in layouts:
        nights = 0.5 + contrast * (night - 0.5)
        feed = sum(np.exp(-since(f) / 1.25) for f in feeds)
        rise = sum(np.exp(-since(f) / 0.5) for f in feeds)
        lag = sum(np.exp(-((since(f) - 2.5) / 1.0) ** 2) for f in feeds)
        push = sum(np.exp(-since(p) / 0.4) for p in pushes) / max(len(pushes) / 8, 1)
        eat = 0.05 + 0.10 * (1 - nights) + 0.55 * peak * feed + 0.10 * push
        rum = (0.22 + 0.33 * nights) * np.clip(1 - 1.3 * eat, 0.05, 1) + 0.08 * lag
        lie = (0.28 + 0.47 * nights) * np.clip(1 - 1.4 * eat, 0.05, 1)
        act = 0.55 + 0.55 * (1 - nights) + 1.2 * peak * rise + 0.35 * push
        for name, values in (("act", act), ("rum", rum), ("eat", eat), ("lie", lie)):
            rows[name].append(values / values.mean())
    tables = {name: np.stack(values) for name, values in rows.items()}
    tables["night"] = night
    return tables


def plan_events(cows: int, zones: int, start: datetime, end: datetime, *, per_cow_day: float | None = 0.02,
                rng: np.random.Generator, state: HerdState | None = None, shape: str = "parlour") -> Plan:
    """The events over [start, end) of `state` (default: a farm of `cows` and `zones` drawn from
    `rng`); `per_cow_day` None for the literature's rates (HerdState.plan)."""
    state = state if state is not None else HerdState(0, cows, zones, rng, shape=shape)
    return state.plan(start, end, per_cow_day=per_cow_day)


def messages(state: HerdState, t: datetime, interval_s: float, events: Sequence[Event]) -> Iterator[tuple[str, bytes]]:
    """The (topic, payload) of everything the farm publishes in the tick ending at `t`, late and
    duplicated messages included (SENSOR_BATCH: a reading batch for the HTTP endpoint)."""
    return state.messages(t, interval_s, events)


REGISTER_SQL = {
    "farms": "INSERT INTO iot.farms (id, name) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
    "zones": "INSERT INTO iot.zones (id, farm_id, barn_id, barn_name, name) VALUES ($1, $2, $3, $4, $5) "
             "ON CONFLICT (id) DO NOTHING",
    "animals": "INSERT INTO iot.animals (id, farm_id, code, rfid_epc, lactation_number, calving_date, group_name) "
               "VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING",
    "devices": "INSERT INTO iot.devices (device_uid, farm_id, device_type, animal_id, zone_id, expected_interval_s) "
               "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (device_uid) DO NOTHING",
}


def registry_rows(farm_id: int, cows: int, zones: int, interval_s: int, state: HerdState | None = None
                  ) -> dict[str, list[tuple]]:
    """The farm as Odoo would push it (for a demo without Odoo): farm, zones, animals (with their
    lactation, calving date and pen when `state` is given), devices."""
    def animal(c: int) -> tuple:
        if state is None or state.origin is None:
            return None, None, None
        calving = state.origin - timedelta(days=float(state.dim0[c]))
        return int(state.parity[c]), calving.date(), f"Pen {int(state.pen[c]) + 1}"

    return {
        "farms": [(farm_id, f"Simulated farm {farm_id}")],
        "zones": [(zone_id(farm_id, z), farm_id, 1, "Barn 1", f"Zone {z + 1}") for z in range(zones)],
        "animals": [(animal_id(farm_id, c), farm_id, cow_code(c), f"E2003415{farm_id:04X}{c:08X}", *animal(c))
                    for c in range(cows)],
        "devices": [(collar_uid(farm_id, c), farm_id, "collar", animal_id(farm_id, c), None, interval_s)
                    for c in range(cows)]
                   + [(zone_uid(farm_id, z), farm_id, "env_sensor", None, zone_id(farm_id, z), interval_s)
                      for z in range(zones)],
    }
