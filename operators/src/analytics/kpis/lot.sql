-- Per lot: totals so far, and once its outcome is in, ITM and losses (SPEC §4).
-- ITM = maize eaten per duck over the whole lot (sum of dose_reelle) / mean liver weight;
-- the liver weight comes from the outcome, else from the lot's SQAL samples.
-- This query fills the lot_kpis dataset: one row per lot as a query sees it.
WITH totals AS (
  SELECT
    code_lot,
    max(gaveur_id) AS gaveur_id,
    max(site) AS site,
    count(*) AS repas,
    count(DISTINCT jour) AS jours,
    min(event_time) AS premier_repas,
    max(event_time) AS dernier_repas,
    sum(dose_reelle) AS mais_total_g,
    sum(dose_theorique) AS mais_theorique_total_g,
    avg(CASE WHEN dose_theorique > 0
             THEN (dose_reelle - dose_theorique) / dose_theorique * 100 END) AS ecart_moyen_pct,
    max(taux_mortalite) AS taux_mortalite
  FROM meals
  GROUP BY code_lot
)
SELECT
  coalesce(t.code_lot, o.code_lot) AS code_lot,
  coalesce(t.gaveur_id, o.gaveur_id) AS gaveur_id,
  coalesce(t.site, o.site) AS site,
  coalesce(t.repas, 0) AS repas,
  coalesce(t.jours, 0) AS jours,
  t.premier_repas,
  t.dernier_repas,
  coalesce(t.mais_total_g, 0.0) AS mais_total_g,
  coalesce(t.mais_theorique_total_g, 0.0) AS mais_theorique_total_g,
  t.ecart_moyen_pct,
  t.taux_mortalite,
  o.code_lot IS NOT NULL AS termine,
  o.date_fin,
  o.nb_canards_mis_en_gavage,
  o.nb_canards_accroches,
  coalesce(o.poids_foie_moyen_g, s.poids_foie_estime_moyen_g) AS poids_foie_moyen_g,
  CASE WHEN coalesce(o.poids_foie_moyen_g, s.poids_foie_estime_moyen_g) > 0
       THEN coalesce(t.mais_total_g, 0.0) / coalesce(o.poids_foie_moyen_g, s.poids_foie_estime_moyen_g)
  END AS itm,
  CASE WHEN o.nb_canards_mis_en_gavage > 0
       THEN CAST(o.nb_canards_mis_en_gavage - o.nb_canards_accroches AS DOUBLE)
            / CAST(o.nb_canards_mis_en_gavage AS DOUBLE)
  END AS pertes
FROM totals t
FULL OUTER JOIN outcomes o ON t.code_lot = o.code_lot
LEFT JOIN (
  SELECT code_lot, avg(poids_foie_estime_g) AS poids_foie_estime_moyen_g
  FROM lot_samples GROUP BY code_lot
) s ON s.code_lot = coalesce(t.code_lot, o.code_lot)
ORDER BY code_lot
