-- Per gaveur and per site: tumbling 1-day and sliding 7-day windows of event time (SPEC §4).
-- A window is (re)computed when one of its lot-days closes on its lot's watermark, or when a
-- late meal corrects it. Only closed lot-days count (`window_lot_days`: each one summed);
-- finished lots count on their date_fin.
WITH meal_stats AS (
  SELECT
    w.scope, w.key, w.window_start, w.window_end, w.window_days,
    count(DISTINCT d.code_lot) AS lots_actifs,
    sum(d.ecart_abs_sum) / CAST(sum(d.ecart_n) AS DOUBLE) AS ecart_abs_moyen_pct,
    avg(d.mortalite) AS mortalite_moyenne_pct
  FROM window_days w
  LEFT JOIN window_lot_days d ON d.scope = w.scope AND d.key = w.key AND d.day = w.day
  GROUP BY w.scope, w.key, w.window_start, w.window_end, w.window_days
),
itm_stats AS (
  SELECT
    w.scope, w.key, w.window_start, w.window_days,
    count(f.code_lot) AS lots_termines,
    avg(f.itm) AS itm_moyen
  FROM window_days w
  LEFT JOIN finished_lots f ON f.scope = w.scope AND f.key = w.key AND f.day = w.day
  GROUP BY w.scope, w.key, w.window_start, w.window_days
)
SELECT
  m.scope,
  CASE WHEN m.scope = 'gaveur' THEN CAST(m.key AS BIGINT) END AS gaveur_id,
  CASE WHEN m.scope = 'site' THEN m.key END AS site,
  m.window_days,
  m.window_start,
  m.window_end,
  m.lots_actifs,
  m.ecart_abs_moyen_pct,
  m.mortalite_moyenne_pct,
  i.lots_termines,
  i.itm_moyen
FROM meal_stats m
JOIN itm_stats i
  ON i.scope = m.scope AND i.key = m.key
 AND i.window_start = m.window_start AND i.window_days = m.window_days
ORDER BY m.scope, m.key, m.window_days, m.window_start
