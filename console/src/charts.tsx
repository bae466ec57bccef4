// A live time-series chart: a thin Preact wrapper around uPlot.
//
// uPlot draws on a canvas and is imperative, so the chart is created once per mount, fed with
// setData() when the samples change, and resized from a ResizeObserver so it follows its card's width
// (the layout is fluid from phone to desktop). x values are epoch seconds, uPlot's default.
import { useEffect, useRef } from 'preact/hooks';
import uPlot from 'uplot';
import 'uplot/dist/uPlot.min.css';

export interface ChartSeries {
  label: string;
  color: string;
  /** Series on the same scale share an axis; a second scale gets an axis on the right. */
  scale: string;
  format: (v: number) => string;
  /**
   * The smallest top of the y axis, so an idle VM draws a flat line at the bottom of a sensible scale
   * rather than ticks like "0.2 B".
   */
  floor: number;
}

interface ChartProps {
  testId: string;
  title: string;
  series: ChartSeries[];
  /** [x (epoch s), ...one array per series]; null values leave gaps. */
  data: [number[], ...(number | null)[][]];
  /** Shown over an empty chart, to say why there is nothing to draw. */
  emptyText: string;
}

const PLOT_HEIGHT_PX = 236;

export function Chart({ testId, title, series, data, emptyText }: ChartProps) {
  const holder = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlot | null>(null);
  // The series are fixed per chart; keying the effect on their labels avoids rebuilding on every render.
  const key = series.map((s) => `${s.label}/${s.scale}`).join('|');

  useEffect(() => {
    const el = holder.current;
    if (!el) return;
    const scales = [...new Set(series.map((s) => s.scale))];
    const formatOf = (scale: string) => series.find((s) => s.scale === scale)?.format ?? String;
    const axisStyle = {
      stroke: '#5b6776',
      grid: { stroke: '#eef1f4', width: 1 },
      ticks: { stroke: '#e3e7ec' },
    };
    const opts: uPlot.Options = {
      width: Math.max(200, el.clientWidth),
      height: PLOT_HEIGHT_PX,
      cursor: { drag: { x: false, y: false } },
      scales: {
        // With one sample (or none) uPlot would stretch the time axis over years; show a minute instead.
        x: {
          time: true,
          range: (_u, min, max): uPlot.Range.MinMax => {
            if (Number.isFinite(min) && Number.isFinite(max) && max - min >= 1) return [min, max];
            const end = Number.isFinite(max) ? max : Date.now() / 1000;
            return [end - 60, end];
          },
        },
        ...Object.fromEntries(
          scales.map((scale) => {
            const floor = series.find((s) => s.scale === scale)?.floor ?? 1;
            const range: uPlot.Range.Function = (_u, _min, max) => [0, Math.max(max * 1.1, floor)];
            return [scale, { range }];
          }),
        ),
      },
      axes: [
        { ...axisStyle },
        ...scales.map((scale, i) => ({
          ...axisStyle,
          scale,
          side: i === 0 ? 3 : 1,
          grid: i === 0 ? axisStyle.grid : { show: false },
          size: 78,
          values: (_u: uPlot, ticks: number[]) => ticks.map((t) => formatOf(scale)(t)),
        })),
      ],
      series: [
        { label: 'time', value: (_u, v) => (v === null ? '—' : new Date(v * 1000).toLocaleTimeString()) },
        ...series.map((s) => ({
          label: s.label,
          scale: s.scale,
          stroke: s.color,
          width: 2,
          fill: `${s.color}14`,
          points: { show: false },
          spanGaps: false,
          value: (_u: uPlot, v: number | null) => (v === null ? '—' : s.format(v)),
        })),
      ],
    };
    const u = new uPlot(opts, padded(data), el);
    plot.current = u;
    const observer = new ResizeObserver(() => {
      const width = Math.max(200, el.clientWidth);
      if (width !== u.width) u.setSize({ width, height: PLOT_HEIGHT_PX });
    });
    observer.observe(el);
    return () => {
      observer.disconnect();
      u.destroy();
      plot.current = null;
    };
    // data is fed by the effect below; the chart is rebuilt only when its series change.
  }, [key]);

  useEffect(() => {
    plot.current?.setData(padded(data));
  }, [data]);

  const empty = data.slice(1).every((ys) => ys.every((y) => y === null));
  // (padded() below keeps uPlot's time axis to a minute while there are fewer than two samples.)
  return (
    <section class="card chart-card" data-testid={testId}>
      <h3 class="chart-title">{title}</h3>
      <div class="chart-holder">
        <div ref={holder} />
        {empty && (
          <div class="chart-empty">
            <span>{emptyText}</span>
          </div>
        )}
      </div>
    </section>
  );
}

/**
 * With fewer than two samples uPlot has no time span and spreads its axis
 * over years; a minute of empty time before the one sample (or now) reads
 * right instead.
 */
function padded(data: [number[], ...(number | null)[][]]): uPlot.AlignedData {
  const xs = data[0];
  if (xs.length >= 2) return data as uPlot.AlignedData;
  const end = xs[0] ?? Date.now() / 1000;
  return [[end - 60, end], ...data.slice(1).map((ys) => [null, ys[0] ?? null])] as uPlot.AlignedData;
}
