"""How much load to provision for: the sizing maths on the scaler's own record. Pure: data and `now` in,
numbers out; no I/O.

**The sizing.** With a service level the planner provisions

    max(m · B_w, R),    B_w = w·F + (1 − w)·R,

where F is the forecast's peak over the lead window (times the level correction), R the load observed now
(the reactive floor, never scaled down), w the trust in the forecast and m the calibrated multiplier. At
w = 1 this is the forecast with the floor under it; at w = 0 reactive scaling with a calibrated headroom.
Sized by headroom instead, it provisions max(B_w, R) = R + w·max(0, F − R), times 1 + headroom.

One module per concern:

- `loads`: the formulas, `trust_weighted_mean` (B_w), `floor_plus_trusted_rise` (max(B_w, R), the
  headroom sizing's load) and `calibrated_load` (max(m·B_w, R), the service level's);
- `samples`: the record as `Samples`, one per load bucket, with its incidents; `samples_from_forecasts` and
  `ForecastRecord`, the operator's record of the forecasts it used;
- `service_level`: parsing a service level, and `needed_multiplier`, the m that meets it on the record;
- `trust`: `choose_trust`, the weight w the record supports;
- `level_correction`: the factor F is scaled by toward the level the load ran at in the last hour;
- `calibration`: `calibrate_sizing` → `SizingCalibration` (w and, with a service level, m per lead-time
  bucket) and how that sizing served the record (`realized_sizing`, `status_fields`).

Three words are kept apart: the *service level* is the share of requests to serve (a percentage); the
*level correction* is a factor on the forecast; the *trust weight* is w.
"""
