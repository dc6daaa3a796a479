-- Per meal: how far the real dose was from the planned one (SPEC §4).
SELECT
  code_lot,
  gaveur_id,
  site,
  jour,
  moment,
  event_time,
  dose_theorique,
  dose_reelle,
  dose_reelle - dose_theorique AS ecart_g,
  CASE WHEN dose_theorique > 0
       THEN (dose_reelle - dose_theorique) / dose_theorique * 100 END AS ecart_pct
FROM batch_meals
ORDER BY code_lot, jour, moment
