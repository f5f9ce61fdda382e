import { Component, onWillStart, onWillUnmount, useEffect, useRef } from "@odoo/owl";
import { loadBundle } from "@web/core/assets";

/**
 * A Chart.js chart in a card. Chart.js ships with Odoo as a lazy bundle: loaded before the first
 * render, the chart is drawn once the canvas exists and redrawn when the config changes (every
 * refresh builds a new config object), and destroyed with the component so no canvas leaks.
 */
export class DairyChart extends Component {
    static template = "smart_dairy_iot_dashboard.DairyChart";
    static props = {
        name: String,
        title: String,
        subtitle: { type: String, optional: true },
        chart: Object, // {config, isEmpty, drill} from chart_data.js
        emptyText: String,
        onDrill: { type: Function, optional: true }, // receives the action of the clicked point
    };

    setup() {
        this.canvasRef = useRef("canvas");
        this.chart = null;
        onWillStart(() => loadBundle("web.chartjs_lib"));
        useEffect(
            () => {
                this.draw();
                return () => this.destroy();
            },
            () => [this.props.chart]
        );
        onWillUnmount(() => this.destroy());
    }

    draw() {
        if (this.props.chart.isEmpty || !this.canvasRef.el) {
            return;
        }
        const config = this.props.chart.config;
        this.chart = new Chart(this.canvasRef.el, {
            ...config,
            options: {
                ...config.options,
                onClick: (event, elements) => this.onClick(elements),
                onHover: (event, elements) => {
                    event.native.target.style.cursor = elements.length ? "pointer" : "default";
                },
            },
        });
    }

    destroy() {
        this.chart?.destroy();
        this.chart = null;
    }

    onClick(elements) {
        if (!elements.length || !this.props.onDrill) {
            return;
        }
        const { datasetIndex, index } = elements[0];
        const action = this.props.chart.drill(datasetIndex, index);
        if (action) {
            this.props.onDrill(action);
        }
    }
}
