-- SQAL per device and per site (by day of event time) and per lot: counts per grade,
-- compliance rate, mean final score and mean estimated liver weight (SPEC §4).
SELECT
  scope,
  CASE WHEN scope = 'device' THEN key END AS device_id,
  max(site) AS site,
  CASE WHEN scope = 'lot' THEN key END AS code_lot,
  period,
  count(*) AS echantillons,
  sum(CASE WHEN grade = 'A+' THEN 1 ELSE 0 END) AS grade_a_plus,
  sum(CASE WHEN grade = 'A' THEN 1 ELSE 0 END) AS grade_a,
  sum(CASE WHEN grade = 'B' THEN 1 ELSE 0 END) AS grade_b,
  sum(CASE WHEN grade = 'C' THEN 1 ELSE 0 END) AS grade_c,
  sum(CASE WHEN grade = 'REJECT' THEN 1 ELSE 0 END) AS grade_reject,
  avg(CASE WHEN is_compliant THEN 1.0 ELSE 0.0 END) AS taux_conformite,
  avg(final_score) AS score_moyen,
  avg(poids_foie_estime_g) AS poids_foie_estime_moyen_g
FROM sqal_scoped
GROUP BY scope, key, period
ORDER BY scope, key, period
