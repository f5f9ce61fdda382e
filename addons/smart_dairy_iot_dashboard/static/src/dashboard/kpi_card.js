import { Component } from "@odoo/owl";

/**
 * One figure of the farm: a title, a value and what it is compared with. The whole card drills
 * down (onClick); chips drill down to a part of it (e.g. one severity) without opening the card's.
 */
export class KpiCard extends Component {
    static template = "smart_dairy_iot_dashboard.KpiCard";
    static props = {
        name: String, // stable key for tests and tours
        title: String,
        value: String,
        unit: { type: String, optional: true },
        subtitle: { type: String, optional: true },
        icon: { type: String, optional: true },
        tone: { type: String, optional: true }, // ok, info, warning, danger, muted
        progress: { type: Number, optional: true }, // percent, drawn as a bar
        chips: { type: Array, optional: true }, // [{key, label, value, tone, onClick}]
        onClick: { type: Function, optional: true },
    };
    static defaultProps = { tone: "muted", chips: [] };

    onChipClick(chip) {
        chip.onClick?.();
    }

    get progressWidth() {
        return `${Math.max(0, Math.min(100, this.props.progress))}%`;
    }
}
