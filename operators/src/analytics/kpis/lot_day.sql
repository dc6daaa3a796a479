-- Per lot and feeding day: the day's dose, the lot's curve so far, weight gain, mortality and
-- the barn climate. Emitted for the days the micro-batch touched.
WITH daily AS (
  SELECT
    code_lot,
    max(gaveur_id) AS gaveur_id,
    max(site) AS site,
    jour,
    count(*) AS repas,
    sum(dose_reelle) AS dose_journaliere_g,
    sum(dose_theorique) AS dose_theorique_journaliere_g,
    avg(poids_moyen) AS poids_moyen_g,
    min(nb_canards_vivants) AS nb_canards_vivants,
    max(taux_mortalite) AS taux_mortalite,
    min(temperature_stabule) AS temperature_min,
    avg(temperature_stabule) AS temperature_moyenne,
    max(temperature_stabule) AS temperature_max,
    min(humidite_stabule) AS humidite_min,
    avg(humidite_stabule) AS humidite_moyenne,
    max(humidite_stabule) AS humidite_max
  FROM meals
  GROUP BY code_lot, jour
),
curve AS (
  SELECT
    *,
    sum(dose_journaliere_g) OVER (PARTITION BY code_lot ORDER BY jour) AS mais_cumule_g,
    poids_moyen_g - lag(poids_moyen_g) OVER (PARTITION BY code_lot ORDER BY jour) AS gain_poids_g
  FROM daily
)
SELECT c.*
FROM curve c
JOIN touched_days t ON c.code_lot = t.code_lot AND c.jour = t.jour
ORDER BY c.code_lot, c.jour
